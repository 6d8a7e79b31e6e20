"""What the storage contract suites (tests/test_storage_*.py) share: a settable clock, storages opened on the
``db_url`` backend (SQLite, and PostgreSQL when one answers; see conftest.py), builders of runs, workers and
receipts, and lookups of single rows that the stores leave out because the coordinator never needs them. A suite
imports the fixtures it uses from here."""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from coordinator.schema import Receipt, Worker
from coordinator.storage import ReceiptRecord, RunRecord, Storage, WorkerRecord
from coordinator.storage.database import to_record

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
START = T0 - timedelta(hours=1)  # before every interval that receipt_of picks by itself


class FakeClock:
    """A settable clock, so that timestamps in the tests are exact."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def open_storage(db_url: str) -> Iterator[Callable[..., Storage]]:
    opened: list[Storage] = []

    def _open(**kwargs) -> Storage:
        opened.append(Storage(db_url, **kwargs))
        return opened[-1]

    yield _open
    for storage in opened:
        storage.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def storage(open_storage, clock: FakeClock) -> Storage:
    return open_storage(clock=clock)


def create_run(storage: Storage, name: str = "demo", spec_json: str = '{"lr": 0.001}') -> RunRecord:
    return storage.runs.create_run(name, spec_json, f"hash-{name}", "fingerprint", "digest")


def register(storage: Storage, run: str = "demo", peer: str = "peer-a", shards=(0, 1)) -> WorkerRecord:
    return storage.runs.register_worker(run, peer, f"name of {peer}", shards, data_slice=3, device="cuda:0")


# Every receipt that receipt_of times by itself gets a minute of its own from T0 on, so that those never overlap;
# tests that set intervals explicitly use times before T0.
_SLOTS = itertools.count()
_SIGNED_FIELDS = ("receipt_id", "run_name", "shard", "peer_id", "epoch", "steps", "samples", "tokens",
                  "compute_seconds", "loss", "started_at", "ended_at")


def receipt_of(worker: WorkerRecord | None = None, *, run: str = "demo", peer: str = "peer-a",
               **overrides: Any) -> ReceiptRecord:
    """A receipt of ``worker`` (or of ``peer`` in ``run`` without a worker) with sensible defaults; its payload
    and signature follow from the signed fields unless given, so receipts that differ in content differ there."""
    if worker is not None:
        run, peer = worker.run_name, worker.peer_id
    started = T0 + timedelta(minutes=next(_SLOTS))
    values: dict[str, Any] = dict(
        receipt_id=uuid.uuid4().hex, run_name=run, shard=0, peer_id=peer,
        worker_id=None if worker is None else worker.worker_id, epoch=0, steps=2, samples=10, tokens=640,
        compute_seconds=3.0, loss=1.5, started_at=started, ended_at=started + timedelta(seconds=30),
        received_at=T0 - timedelta(days=1), payload="", public_key=f"key of {peer}", signature="",
        status="unverified", status_reason="", checked_at=None,
    ) | overrides
    if "payload" not in overrides:
        values["payload"] = json.dumps({name: str(values[name]) for name in _SIGNED_FIELDS}, sort_keys=True)
    if "signature" not in overrides:
        values["signature"] = "sig:" + hashlib.sha256(values["payload"].encode()).hexdigest()
    return ReceiptRecord(**values)


def add(storage: Storage, worker: WorkerRecord | None = None, **overrides: Any) -> ReceiptRecord:
    """Store a new receipt (see ``receipt_of``) and return what storage made of it."""
    stored, created = storage.ledger.add_receipt(receipt_of(worker, **overrides))
    assert created
    return stored


def assert_no_receipts(storage: Storage, run: str = "demo") -> None:
    assert storage.ledger.list_receipts(run) == []
    assert storage.ledger.samples_by_shard(run) == {}
    assert storage.ledger.leaderboard(run, include_unverified=True) == []
    assert storage.ledger.contributors_between(run, None, T0 + timedelta(days=365)) == []


def get_worker(storage: Storage, worker_id: str) -> WorkerRecord | None:
    """The worker registration as stored, read straight from its table."""
    with storage.database.transaction() as session:
        row = session.get(Worker, worker_id)
        return None if row is None else to_record(WorkerRecord, row)


def get_receipt(storage: Storage, receipt_id: str) -> ReceiptRecord | None:
    """The receipt as stored, read straight from its table."""
    with storage.database.transaction() as session:
        row = session.get(Receipt, receipt_id)
        return None if row is None else to_record(ReceiptRecord, row)
