"""The adapter registry's records (``VersionStore``): published adapter versions of each run, their release and
garbage-collection marks, and the snapshots the publisher refused."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator.schema import AdapterVersion, RejectedSnapshot
from coordinator.storage.database import Database, StorageError, require_finite, require_non_negative, to_record
from coordinator.storage.runs import require_run


class UnknownVersionError(StorageError):
    """The run has no version with that number."""


class VersionExistsError(StorageError):
    """This run already has an adapter version with this number."""


@dataclass(frozen=True)
class VersionRecord:
    run_name: str
    version: int
    sha256: str
    path: str
    epoch: int
    samples: int
    eval_loss: float
    base_eval_loss: float
    contributors: tuple[str, ...]
    created_at: datetime
    manifest: str | None = None  # the signed manifest bytes (utf-8 JSON); None for versions before 0003
    manifest_signature: str | None = None  # swarm.manifest.SignedManifest.signature_json()
    release: bool = False  # marked as a release: retention never removes it
    collected_at: datetime | None = None  # when retention removed its files (the row stays as history)


@dataclass(frozen=True)
class RejectedSnapshotRecord:
    run_name: str
    epoch: int | None
    eval_loss: float | None
    reason: str
    attempted_at: datetime


class VersionStore:
    """Adapter versions, numbered 1, 2, 3 ... per run and immutable once added except for their release and
    collected marks, and the snapshots the quality gate refused. Each method runs in its own short transaction.

    Example::

        number = storage.versions.next_version_number("demo")
        storage.versions.add_version("demo", number, sha256, path, epoch, samples, eval_loss, base_eval_loss,
                                     contributors, manifest, signature)
        storage.versions.get_version("demo")  # the latest
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def add_version(self, run_name: str, version: int, sha256: str, path: str, epoch: int, samples: int,
                    eval_loss: float, base_eval_loss: float, contributors: Sequence[str],
                    manifest: str | None = None, manifest_signature: str | None = None) -> VersionRecord:
        """Record a published adapter version; ``VersionExistsError`` if the run already has this number."""
        if version < 1:
            raise ValueError(f"version numbers start at 1, got {version}")
        require_non_negative(epoch=epoch, samples=samples)
        require_finite(eval_loss=eval_loss, base_eval_loss=base_eval_loss)
        row = AdapterVersion(run_name=run_name, version=int(version), sha256=sha256, path=path, epoch=int(epoch),
                             samples=int(samples), eval_loss=float(eval_loss), base_eval_loss=float(base_eval_loss),
                             contributors=tuple(str(peer) for peer in contributors), created_at=self._db.now(),
                             manifest=manifest, manifest_signature=manifest_signature, release=False)
        with self._db.transaction() as session:
            require_run(session, run_name)
            session.add(row)
            try:
                session.flush()
            except IntegrityError as exc:
                raise VersionExistsError(f"run {run_name!r} already has version {version}") from exc
            return to_record(VersionRecord, row)

    def set_release(self, run_name: str, version: int, release: bool = True) -> VersionRecord:
        """Mark (or unmark) a version as a release, which retention keeps forever."""
        with self._db.transaction() as session:
            row = self._require_version(session, run_name, version)
            if row.collected_at is not None and release:
                raise ValueError(f"version {version} of run {run_name!r} was garbage-collected; it cannot be a release")
            row.release = bool(release)
            return to_record(VersionRecord, row)

    def mark_collected(self, run_name: str, version: int) -> VersionRecord:
        """Record that retention removed the version's files (the row stays for history)."""
        with self._db.transaction() as session:
            row = self._require_version(session, run_name, version)
            if row.release:
                raise ValueError(f"version {version} of run {run_name!r} is a release and is never collected")
            if row.collected_at is None:
                row.collected_at = self._db.now()
            return to_record(VersionRecord, row)

    @staticmethod
    def _require_version(session: Session, run_name: str, version: int) -> AdapterVersion:
        require_run(session, run_name)
        row = session.scalar(select(AdapterVersion).where(AdapterVersion.run_name == run_name,
                                                          AdapterVersion.version == version).with_for_update())
        if row is None:
            raise UnknownVersionError(f"run {run_name!r} has no version {version}")
        return row

    def next_version_number(self, run_name: str) -> int:
        """One more than the highest stored version of the run; 1 when it has none."""
        with self._db.transaction() as session:
            require_run(session, run_name)
            query = select(func.max(AdapterVersion.version)).where(AdapterVersion.run_name == run_name)
            highest = session.scalar(query)
            return 1 if highest is None else int(highest) + 1

    def list_versions(self, run_name: str) -> list[VersionRecord]:
        """The run's versions in ascending order."""
        with self._db.transaction() as session:
            require_run(session, run_name)
            rows = session.scalars(
                select(AdapterVersion).where(AdapterVersion.run_name == run_name).order_by(AdapterVersion.version)
            )
            return [to_record(VersionRecord, row) for row in rows]

    def get_version(self, run_name: str, version: int | None = None) -> VersionRecord | None:
        """The given version of the run (the latest when ``version`` is None), or None if it does not exist."""
        query = select(AdapterVersion).where(AdapterVersion.run_name == run_name)
        if version is None:
            query = query.order_by(AdapterVersion.version.desc()).limit(1)
        else:
            query = query.where(AdapterVersion.version == version)
        with self._db.transaction() as session:
            require_run(session, run_name)
            row = session.scalar(query)
            return None if row is None else to_record(VersionRecord, row)

    # Rejected snapshots

    def add_rejected_snapshot(self, run_name: str, reason: str, epoch: int | None = None,
                              eval_loss: float | None = None) -> RejectedSnapshotRecord:
        """Record a snapshot the publisher refused, with why (shown by ``swarm status``)."""
        if eval_loss is not None and not math.isfinite(eval_loss):
            eval_loss = None  # the reason says it; the column holds numbers only
        row = RejectedSnapshot(run_name=run_name, epoch=epoch, eval_loss=eval_loss, reason=str(reason),
                               attempted_at=self._db.now())
        with self._db.transaction() as session:
            require_run(session, run_name)
            session.add(row)
            session.flush()
            return to_record(RejectedSnapshotRecord, row)

    def rejected_snapshots(self, run_name: str, limit: int = 20) -> list[RejectedSnapshotRecord]:
        """The run's most recent rejected snapshots, newest first."""
        with self._db.transaction() as session:
            require_run(session, run_name)
            rows = session.scalars(select(RejectedSnapshot).where(RejectedSnapshot.run_name == run_name)
                                   .order_by(RejectedSnapshot.id.desc()).limit(limit))
            return [to_record(RejectedSnapshotRecord, row) for row in rows]
