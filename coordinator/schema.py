"""SQLAlchemy 2 declarative models of the coordinator database.

Only ``coordinator.storage`` and the Alembic migrations use these; the rest of the coordinator talks to the
frozen records that ``Storage`` returns. A schema change here needs a new revision in ``migrations/versions``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Explicit constraint names, so that migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no timezone type and would silently drop (not convert) the offset, so values are converted to
    UTC before binding and tagged as UTC when read back.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class JSONTuple(TypeDecorator[tuple[Any, ...]]):
    """A sequence stored as JSON text and read back as a tuple (records are frozen, so no lists)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(list(value))

    def process_result_value(self, value: str | None, dialect: Dialect) -> tuple[Any, ...] | None:
        return None if value is None else tuple(json.loads(value))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec_json: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(128))
    base_model_fingerprint: Mapped[str] = mapped_column(String(256))
    dataset_digest: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    base_model_revision: Mapped[str | None] = mapped_column(String(64), nullable=True)  # Hub commit, pinned


class Worker(Base):
    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_run_name_last_seen", "run_name", "last_seen"),)

    worker_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_name: Mapped[str] = mapped_column(String(200), ForeignKey("runs.name"))
    peer_id: Mapped[str] = mapped_column(String(256))
    display_name: Mapped[str] = mapped_column(String(256))
    shards: Mapped[tuple[int, ...]] = mapped_column("shards_json", JSONTuple())
    data_slice: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(128))
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    left: Mapped[bool] = mapped_column("has_left", Boolean, default=False)


class Receipt(Base):
    """One signed contribution receipt (``swarm.receipts``), with the evidence needed to re-verify it."""

    __tablename__ = "receipts"
    __table_args__ = (
        Index("ix_receipts_run_name_shard", "run_name", "shard"),
        Index("ix_receipts_run_name_received_at", "run_name", "received_at"),
        Index("ix_receipts_peer_id_shard_ended_at", "peer_id", "shard", "ended_at"),
        Index("ix_receipts_status", "status"),
    )

    receipt_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_name: Mapped[str] = mapped_column(String(200), ForeignKey("runs.name"))
    shard: Mapped[int] = mapped_column(Integer)
    peer_id: Mapped[str] = mapped_column(String(256))
    worker_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("workers.worker_id"), nullable=True)
    epoch: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    compute_seconds: Mapped[float] = mapped_column(Float)
    loss: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[str] = mapped_column(Text)  # the signed canonical JSON
    public_key: Mapped[str] = mapped_column(Text)  # base64 DER of the signer's key
    signature: Mapped[str] = mapped_column(Text)  # base64
    status: Mapped[str] = mapped_column(String(16))  # unverified | verified | disputed
    status_reason: Mapped[str] = mapped_column(Text)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ProgressObservation(Base):
    """What the coordinator saw of one peer's hivemind progress record for one shard and epoch."""

    __tablename__ = "progress_observations"
    __table_args__ = (UniqueConstraint("run_name", "shard", "peer_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_name: Mapped[str] = mapped_column(String(200), ForeignKey("runs.name"))
    shard: Mapped[int] = mapped_column(Integer)
    peer_id: Mapped[str] = mapped_column(String(256))
    epoch: Mapped[int] = mapped_column(Integer)
    samples_per_second: Mapped[float] = mapped_column(Float)  # highest seen at this epoch
    samples_accumulated: Mapped[int] = mapped_column(BigInteger)  # highest seen at this epoch
    key_bound: Mapped[bool] = mapped_column(Boolean)  # the DHT record was signed by the peer's identity key
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("run_name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_name: Mapped[str] = mapped_column(String(200), ForeignKey("runs.name"))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    epoch: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(BigInteger)
    eval_loss: Mapped[float] = mapped_column(Float)
    base_eval_loss: Mapped[float] = mapped_column(Float)
    contributors: Mapped[tuple[str, ...]] = mapped_column("contributors_json", JSONTuple())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    manifest: Mapped[str | None] = mapped_column(Text, nullable=True)  # signed bytes (swarm.manifest), utf-8
    manifest_signature: Mapped[str | None] = mapped_column(Text, nullable=True)  # SignedManifest.signature_json()
    release: Mapped[bool] = mapped_column("is_release", Boolean, default=False)  # kept by retention forever
    collected_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # files removed by GC


class RejectedSnapshot(Base):
    """A snapshot the publisher took but refused to publish (peers disagreed, bad values, quality gate)."""

    __tablename__ = "rejected_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_name: Mapped[str] = mapped_column(String(200), ForeignKey("runs.name"), index=True)
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RunSetting(Base):
    """How a run may be used, chosen at launch and changed by the operator; not part of its (hashed) RunSpec."""

    __tablename__ = "run_settings"

    run_name: Mapped[str] = mapped_column(String(200), ForeignKey("runs.name"), primary_key=True)
    join_policy: Mapped[str] = mapped_column(String(16))  # open | token
    private: Mapped[bool] = mapped_column("is_private", Boolean)  # reads need the operator or a join token
    state: Mapped[str] = mapped_column(String(16))  # active | stopped | archived | removed
    default: Mapped[bool] = mapped_column("is_default", Boolean)  # Joins without a run name go here
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JoinToken(Base):
    """A join token the operator minted for one run; only its sha256 is kept."""

    __tablename__ = "join_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_name: Mapped[str] = mapped_column(String(200), ForeignKey("runs.name"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PeerReport(Base):
    """A worker's report that its averager refused parts from a peer of the run (``ReportPeers``)."""

    __tablename__ = "peer_reports"
    __table_args__ = (Index("ix_peer_reports_run_name_peer_id", "run_name", "peer_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_name: Mapped[str] = mapped_column(String(200), ForeignKey("runs.name"))
    peer_id: Mapped[str] = mapped_column(String(256))  # the reported peer
    reporter: Mapped[str] = mapped_column(String(256))  # peer ID of the (signed) reporter
    count: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(200))
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PeerBan(Base):
    """A peer banned from a run: by reports of its peers, or by the operator."""

    __tablename__ = "peer_bans"
    __table_args__ = (UniqueConstraint("run_name", "peer_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_name: Mapped[str] = mapped_column(String(200), ForeignKey("runs.name"))
    peer_id: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    banned_by: Mapped[str] = mapped_column(String(16))  # reports | operator
    banned_at: Mapped[datetime] = mapped_column(UTCDateTime())
