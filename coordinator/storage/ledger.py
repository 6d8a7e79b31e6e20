"""The contribution ledger's records (``LedgerStore``): signed receipts, the DHT progress observations they are
cross-checked against, and what is counted from them (samples per shard, contributors, the leaderboard).

The rules deciding a receipt's status live in ``coordinator.ledger``; this module only stores and counts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import datetime
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import case, func, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator.schema import ProgressObservation, Receipt, Worker
from coordinator.storage.database import (
    Database,
    StorageError,
    require_finite,
    require_non_negative,
    require_utc,
    to_record,
)
from coordinator.storage.runs import (
    UnknownWorkerError,
    WorkerRecord,
    peer_registrations,
    require_run,
    require_worker,
)


class ReceiptConflictError(StorageError):
    """A receipt id that is already stored with different content (a forged or replayed-and-altered receipt)."""


class OverlappingReceiptError(StorageError):
    """The receipt claims time the same peer already claimed on the same shard (double counting)."""


RECEIPT_STATUSES = ("unverified", "verified", "disputed")


@dataclass(frozen=True)
class ReceiptRecord:
    receipt_id: str
    run_name: str
    shard: int
    peer_id: str
    worker_id: str | None
    epoch: int
    steps: int
    samples: int
    tokens: int
    compute_seconds: float
    loss: float
    started_at: datetime
    ended_at: datetime
    received_at: datetime
    payload: str
    public_key: str
    signature: str
    status: str
    status_reason: str
    checked_at: datetime | None


@dataclass(frozen=True)
class ObservationRecord:
    run_name: str
    shard: int
    peer_id: str
    epoch: int
    samples_per_second: float
    samples_accumulated: int
    key_bound: bool
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class LeaderboardRow:
    peer_id: str
    display_name: str
    samples: int  # counted samples (verified only, or verified + unverified), once however many shards they trained
    verified_samples: int  # the same, of verified receipts only
    compute_seconds: float  # of the counted receipts
    receipts: int
    disputed_receipts: int
    last_seen: datetime


@dataclass(frozen=True)
class PeerContext:
    """What the ledger needs to judge one receipt, read in one transaction (see ``LedgerStore.peer_context``)."""

    registrations: tuple[WorkerRecord, ...]  # the peer's registrations in the run, newest first
    observations: tuple[ObservationRecord, ...]  # the peer's DHT observations on the shard around the interval
    highest_epoch: int | None  # the highest epoch any peer of the shard was observed at
    recent_rates: tuple[float, ...]  # samples per wall second of the peer's latest receipts on the shard


def _shard_observations(run_name: str, shard: int, peer_id: str | None, start: datetime | None,
                        end: datetime | None):
    conditions = [ProgressObservation.run_name == run_name, ProgressObservation.shard == shard]
    if peer_id is not None:
        conditions.append(ProgressObservation.peer_id == peer_id)
    if start is not None:
        conditions.append(ProgressObservation.last_seen >= require_utc(start, "start"))
    if end is not None:
        conditions.append(ProgressObservation.first_seen <= require_utc(end, "end"))
    return select(ProgressObservation).where(*conditions).order_by(ProgressObservation.epoch,
                                                                    ProgressObservation.peer_id)


def _highest_observed_epoch(run_name: str, shard: int):
    return select(func.max(ProgressObservation.epoch)).where(ProgressObservation.run_name == run_name,
                                                             ProgressObservation.shard == shard)


class LedgerStore:
    """Receipts and DHT progress observations of runs, and the totals counted from them. Each method runs in its
    own short transaction; receipts are idempotent by id and never overlap in time per peer and shard, even
    when delivered concurrently. Disputed receipts are kept but never counted.

    Example::

        stored, created = storage.ledger.add_receipt(ReceiptRecord(receipt_id="9f1c...", run_name="demo", ...))
        storage.ledger.record_observation("demo", 0, peer_id, epoch=3, samples_per_second=5.0,
                                          samples_accumulated=128, key_bound=True)
        storage.ledger.samples_by_shard("demo")  # {0: 64}
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    # Receipts

    def add_receipt(self, receipt: ReceiptRecord) -> tuple[ReceiptRecord, bool]:
        """Store a verified-signature receipt (its ``received_at`` is set here); returns (stored, created).

        Idempotent by ``receipt_id``: the same receipt again returns the stored one with ``created=False``;
        the same id with other content raises ``ReceiptConflictError``. A receipt whose interval overlaps
        another receipt of the same peer and shard raises ``OverlappingReceiptError``. ``ValueError`` for
        negative counts or non-finite numbers. Nothing is stored on any error.
        """
        require_non_negative(shard=receipt.shard, samples=receipt.samples, steps=receipt.steps,
                             epoch=receipt.epoch, tokens=receipt.tokens, compute_seconds=receipt.compute_seconds)
        require_finite(loss=receipt.loss)
        if receipt.status not in RECEIPT_STATUSES:
            raise ValueError(f"status must be one of {RECEIPT_STATUSES}, got {receipt.status!r}")
        started, ended = require_utc(receipt.started_at, "started_at"), require_utc(receipt.ended_at, "ended_at")
        if ended <= started:  # a zero-length interval would overlap nothing and could be claimed any number of times
            raise ValueError(f"receipt interval must end after it starts, got {started} .. {ended}")
        now = self._db.now()
        values = {field.name: getattr(receipt, field.name) for field in fields(ReceiptRecord)}
        values.update(started_at=started, ended_at=ended, received_at=now)
        try:
            with self._db.transaction() as session:
                require_run(session, receipt.run_name)
                self._lock_peer_shard(session, receipt.run_name, receipt.peer_id, receipt.shard)
                existing = session.get(Receipt, receipt.receipt_id)
                if existing is not None:
                    return self._same_receipt(existing, receipt), False
                overlapping = session.scalar(
                    select(Receipt.receipt_id).where(
                        Receipt.receipt_id != receipt.receipt_id,
                        Receipt.peer_id == receipt.peer_id, Receipt.shard == receipt.shard,
                        Receipt.run_name == receipt.run_name, Receipt.started_at < ended, Receipt.ended_at > started,
                    ).limit(1)
                )
                if overlapping is not None:
                    raise OverlappingReceiptError(
                        f"receipt {receipt.receipt_id} claims {started:%H:%M:%S}-{ended:%H:%M:%S} on shard "
                        f"{receipt.shard}, which receipt {overlapping} of the same peer already claims")
                if receipt.worker_id is not None:
                    worker = require_worker(session, receipt.worker_id)
                    if worker.run_name != receipt.run_name or worker.peer_id != receipt.peer_id:
                        raise UnknownWorkerError(f"worker {receipt.worker_id!r} is not peer {receipt.peer_id} in "
                                                 f"run {receipt.run_name!r}")
                    worker.last_seen = now
                row = Receipt(**values)
                session.add(row)
                session.flush()
                return to_record(ReceiptRecord, row), True
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
        # lost a race with a concurrent insert of the same receipt id
        with self._db.transaction() as session:
            existing = session.get(Receipt, receipt.receipt_id)
            if existing is None:
                raise StorageError(f"receipt {receipt.receipt_id} could not be stored") from None
            return self._same_receipt(existing, receipt), False

    @staticmethod
    def _lock_peer_shard(session: Session, run_name: str, peer_id: str, shard: int) -> None:
        """Serialize receipts of one peer and shard until the transaction ends, so that two overlapping receipts
        arriving together cannot both pass the overlap check. SQLite transactions already take the write lock
        up front (BEGIN IMMEDIATE); PostgreSQL gets a transaction-scoped advisory lock."""
        if session.get_bind().dialect.name != "postgresql":
            return
        digest = hashlib.blake2b(f"{run_name}\0{peer_id}\0{shard}".encode(), digest_size=8).digest()
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": int.from_bytes(digest, "big", signed=True)})

    @staticmethod
    def _same_receipt(existing: Receipt, receipt: ReceiptRecord) -> ReceiptRecord:
        if existing.payload != receipt.payload or existing.signature != receipt.signature:
            raise ReceiptConflictError(f"receipt id {receipt.receipt_id} is already stored with different content")
        return to_record(ReceiptRecord, existing)

    def list_receipts(self, run_name: str, *, peer_id: str | None = None, shard: int | None = None,
                      status: str | None = None, received_since: datetime | None = None,
                      limit: int | None = None) -> list[ReceiptRecord]:
        """Receipts of the run, newest interval first, optionally filtered."""
        conditions = [Receipt.run_name == run_name]
        if peer_id is not None:
            conditions.append(Receipt.peer_id == peer_id)
        if shard is not None:
            conditions.append(Receipt.shard == shard)
        if status is not None:
            conditions.append(Receipt.status == status)
        if received_since is not None:
            conditions.append(Receipt.received_at >= require_utc(received_since, "received_since"))
        query = select(Receipt).where(*conditions).order_by(Receipt.ended_at.desc(), Receipt.receipt_id)
        with self._db.transaction() as session:
            require_run(session, run_name)
            return [to_record(ReceiptRecord, row) for row in session.scalars(query.limit(limit))]

    def set_receipt_status(self, receipt_id: str, status: str, reason: str) -> None:
        """Record the outcome of (re)checking a receipt; ``StorageError`` if there is no such receipt."""
        if status not in RECEIPT_STATUSES:
            raise ValueError(f"status must be one of {RECEIPT_STATUSES}, got {status!r}")
        with self._db.transaction() as session:
            result = session.execute(update(Receipt).where(Receipt.receipt_id == receipt_id)
                                     .values(status=status, status_reason=reason, checked_at=self._db.now()))
            if cast(CursorResult[Any], result).rowcount == 0:  # an UPDATE's result counts the rows it matched
                raise StorageError(f"no receipt with id {receipt_id!r}")

    # What is counted

    def _per_shard(self, run_name: str, aggregate, verified_only: bool = False) -> dict[int, int]:
        """``aggregate`` (a SQL aggregate over counted receipts: not disputed, or verified only) per shard;
        shards without receipts are absent."""
        counted = Receipt.status == "verified" if verified_only else Receipt.status != "disputed"
        with self._db.transaction() as session:
            require_run(session, run_name)
            rows = session.execute(
                select(Receipt.shard, aggregate)
                .where(Receipt.run_name == run_name, counted)
                .group_by(Receipt.shard)
                .order_by(Receipt.shard)
            )
            return {int(shard): int(value) for shard, value in rows}

    def samples_by_shard(self, run_name: str, verified_only: bool = False) -> dict[int, int]:
        """Samples of the receipts that are not disputed (only the verified ones if asked), per shard."""
        return self._per_shard(run_name, func.sum(Receipt.samples), verified_only)

    def latest_epoch_by_shard(self, run_name: str, verified_only: bool = False) -> dict[int, int]:
        """The highest hivemind epoch a receipt (not disputed; verified if asked) reported, per shard."""
        return self._per_shard(run_name, func.max(Receipt.epoch), verified_only)

    def contributors_between(self, run_name: str, start: datetime | None, end: datetime,
                             verified_only: bool = False) -> list[str]:
        """Sorted distinct peer ids with receipts (not disputed; verified if asked) received in ``(start, end]``;
        ``start=None`` means from the beginning."""
        conditions = [Receipt.run_name == run_name, Receipt.received_at <= require_utc(end, "end"),
                      Receipt.status == "verified" if verified_only else Receipt.status != "disputed"]
        if start is not None:
            conditions.append(Receipt.received_at > require_utc(start, "start"))
        with self._db.transaction() as session:
            require_run(session, run_name)
            peers = session.scalars(select(Receipt.peer_id).where(*conditions).distinct().order_by(Receipt.peer_id))
            return list(peers)

    def display_names(self, run_name: str, peer_ids: Sequence[str]) -> list[str]:
        """The display name each peer registered with in the run (its newest registration's), "" for a peer that
        never registered, in the order of ``peer_ids``: for the contributors of a published version."""
        with self._db.transaction() as session:
            require_run(session, run_name)
            names = _display_names(session, run_name)
        return [names.get(peer, "") for peer in peer_ids]

    def verified_rates(self, run_name: str, shard: int, per_peer: int = 50) -> dict[str, tuple[float, ...]]:
        """Samples per wall second of each peer's latest (at most ``per_peer``) verified receipts on the shard:
        the throughput the swarm's own records confirmed, which the ledger holds new claims to."""
        with self._db.transaction() as session:
            rows = session.execute(
                select(Receipt.peer_id, Receipt.samples, Receipt.started_at, Receipt.ended_at)
                .where(Receipt.run_name == run_name, Receipt.shard == shard, Receipt.status == "verified",
                       Receipt.samples > 0)
                .order_by(Receipt.ended_at.desc()).limit(per_peer * 100)).all()
        rates: dict[str, list[float]] = {}
        for peer, samples, started, ended in rows:
            if len(rates.setdefault(peer, [])) < per_peer:
                rates[peer].append(samples / max((ended - started).total_seconds(), 1e-3))
        return {peer: tuple(values) for peer, values in rates.items()}

    @staticmethod
    def _intervals(run_name: str, counted):
        """A subquery of one row per (peer, interval): the most samples any of the interval's receipts counts
        (``counted``: which receipts count) and the most any verified one does. A worker that trains several
        shards sends one receipt per shard for the same interval and the same samples: they are one interval's
        samples, not one per shard."""
        return (
            select(
                Receipt.peer_id.label("peer_id"),
                func.max(case((counted, Receipt.samples), else_=0)).label("samples"),
                func.max(case((Receipt.status == "verified", Receipt.samples), else_=0)).label("verified"),
            )
            .where(Receipt.run_name == run_name)
            .group_by(Receipt.peer_id, Receipt.started_at, Receipt.ended_at)
            .subquery()
        )

    def distinct_samples(self, run_name: str, verified_only: bool = False) -> int:
        """Samples the run was trained on, each counted once however many shards it trained (receipts that are
        not disputed, or only the verified ones if asked): what ``samples_by_shard`` sums to with one shard."""
        counted = Receipt.status == "verified" if verified_only else Receipt.status != "disputed"
        with self._db.transaction() as session:
            require_run(session, run_name)
            intervals = self._intervals(run_name, counted)
            return int(session.scalar(select(func.coalesce(func.sum(intervals.c.samples), 0))) or 0)

    def leaderboard(self, run_name: str, include_unverified: bool = False) -> list[LeaderboardRow]:
        """Per contributor: counted samples (verified, plus unverified if asked; each sample once, not once per
        shard it trained), compute, receipts, last seen; most counted samples first. Disputed receipts never
        count."""
        counted = ("verified", "unverified") if include_unverified else ("verified",)
        is_counted = Receipt.status.in_(counted)
        with self._db.transaction() as session:
            require_run(session, run_name)
            rows = session.execute(
                select(
                    Receipt.peer_id,
                    func.sum(case((is_counted, Receipt.compute_seconds), else_=0.0)),
                    func.count(),
                    func.sum(case((Receipt.status == "disputed", 1), else_=0)),
                    func.max(Receipt.ended_at),
                )
                .where(Receipt.run_name == run_name)
                .group_by(Receipt.peer_id)
            ).all()
            intervals = self._intervals(run_name, is_counted)
            samples = {peer: (int(counted_samples or 0), int(verified or 0)) for peer, counted_samples, verified in
                       session.execute(select(intervals.c.peer_id, func.sum(intervals.c.samples),
                                              func.sum(intervals.c.verified)).group_by(intervals.c.peer_id))}
            names = _display_names(session, run_name)
        board = [
            LeaderboardRow(peer_id=peer, display_name=names.get(peer, peer[:12]), samples=samples[peer][0],
                           verified_samples=samples[peer][1], compute_seconds=float(compute or 0.0),
                           receipts=int(count), disputed_receipts=int(disputed or 0), last_seen=last)
            for peer, compute, count, disputed, last in rows
        ]
        return sorted(board, key=lambda row: (-row.samples, row.peer_id))

    # Progress observations (what the swarm itself reported on the DHT)

    def record_observation(self, run_name: str, shard: int, peer_id: str, epoch: int, samples_per_second: float,
                           samples_accumulated: int, key_bound: bool) -> None:
        """Remember that ``peer_id`` was seen at ``epoch`` of ``shard`` now, keeping the highest figures."""
        require_non_negative(shard=shard, epoch=epoch, samples_per_second=samples_per_second,
                             samples_accumulated=samples_accumulated)
        now = self._db.now()
        key = dict(run_name=run_name, shard=int(shard), peer_id=peer_id, epoch=int(epoch))
        try:
            self._upsert_observation(key, now, samples_per_second, samples_accumulated, key_bound)
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            # a concurrent caller inserted the same observation first: now it exists, so this updates it
            self._upsert_observation(key, now, samples_per_second, samples_accumulated, key_bound)

    def _upsert_observation(self, key: dict, now: datetime, samples_per_second: float, samples_accumulated: int,
                            key_bound: bool) -> None:
        with self._db.transaction() as session:
            require_run(session, key["run_name"])
            # FOR UPDATE: two pollers raising the same row's maxima must not overwrite each other (PostgreSQL)
            row = session.scalar(select(ProgressObservation).filter_by(**key).with_for_update())
            if row is None:
                session.add(ProgressObservation(**key, samples_per_second=float(samples_per_second),
                                                samples_accumulated=int(samples_accumulated),
                                                key_bound=bool(key_bound), first_seen=now, last_seen=now))
                session.flush()
                return
            row.samples_per_second = max(row.samples_per_second, float(samples_per_second))
            row.samples_accumulated = max(row.samples_accumulated, int(samples_accumulated))
            row.key_bound = row.key_bound and bool(key_bound)
            row.last_seen = now

    def observations(self, run_name: str, shard: int, peer_id: str | None = None, start: datetime | None = None,
                     end: datetime | None = None) -> list[ObservationRecord]:
        """Observations of the shard (of one peer if given) whose seen interval meets ``[start, end]``."""
        with self._db.transaction() as session:
            rows = session.scalars(_shard_observations(run_name, shard, peer_id, start, end))
            return [to_record(ObservationRecord, row) for row in rows]

    def highest_observed_epoch(self, run_name: str, shard: int) -> int | None:
        """The highest epoch any peer of the shard was observed at; None before the first observation."""
        with self._db.transaction() as session:
            value = session.scalar(_highest_observed_epoch(run_name, shard))
            return None if value is None else int(value)

    def peer_context(self, run_name: str, peer_id: str, shard: int, start: datetime, end: datetime,
                     history: int = 50) -> PeerContext:
        """Everything the ledger checks a receipt of ``peer_id`` on ``shard`` for ``[start, end]`` against, in
        one transaction (a receipt costs one read and one write round trip, not one per question)."""
        with self._db.transaction() as session:
            registrations = tuple(to_record(WorkerRecord, row)
                                  for row in session.scalars(peer_registrations(run_name, peer_id)))
            observations = tuple(to_record(ObservationRecord, row)
                                 for row in session.scalars(_shard_observations(run_name, shard, peer_id, start, end)))
            highest = session.scalar(_highest_observed_epoch(run_name, shard))
            recent = session.execute(
                select(Receipt.samples, Receipt.started_at, Receipt.ended_at)
                .where(Receipt.run_name == run_name, Receipt.peer_id == peer_id, Receipt.shard == shard,
                       Receipt.status != "disputed", Receipt.samples > 0)
                .order_by(Receipt.ended_at.desc()).limit(history)).all()
        rates = tuple(samples / max((ended - started).total_seconds(), 1e-3) for samples, started, ended in recent)
        return PeerContext(registrations, observations, None if highest is None else int(highest), rates)


def _display_names(session, run_name: str) -> dict[str, str]:
    """peer ID -> display name of its newest registration in the run."""
    return dict(session.execute(
        select(Worker.peer_id, Worker.display_name).where(Worker.run_name == run_name).order_by(Worker.joined_at)
    ).all())
