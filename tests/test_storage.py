"""Contract tests of coordinator.storage.Storage, run against every backend: SQLite always, PostgreSQL when a
server answers at 127.0.0.1:5432 (database ``test``) and psycopg is installed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from coordinator.schema import Base
from coordinator.storage import (
    MIGRATIONS_DIR,
    LeaderboardRow,
    ObservationRecord,
    OverlappingReceiptError,
    ReceiptConflictError,
    ReceiptRecord,
    RunExistsError,
    Storage,
    StorageError,
    UnknownRunError,
    UnknownWorkerError,
    VersionExistsError,
    WorkerRecord,
)

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


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


def _create_run(storage: Storage, name: str = "demo", spec_json: str = '{"lr": 0.001}'):
    return storage.runs.create_run(name, spec_json, f"hash-{name}", "fingerprint", "digest")


def _register(storage: Storage, run: str = "demo", peer: str = "peer-a", shards=(0, 1)):
    return storage.runs.register_worker(run, peer, f"name of {peer}", shards, data_slice=3, device="cuda:0")


# Every receipt that _receipt times by itself gets a minute of its own from T0 on, so that those never overlap;
# tests that set intervals explicitly use times before T0.
_SLOTS = itertools.count()
_SIGNED_FIELDS = ("receipt_id", "run_name", "shard", "peer_id", "epoch", "steps", "samples", "tokens",
                  "compute_seconds", "loss", "started_at", "ended_at")


def _receipt(worker: WorkerRecord | None = None, *, run: str = "demo", peer: str = "peer-a",
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


def _add(storage: Storage, worker: WorkerRecord | None = None, **overrides: Any) -> ReceiptRecord:
    """Store a new receipt (see ``_receipt``) and return what storage made of it."""
    stored, created = storage.ledger.add_receipt(_receipt(worker, **overrides))
    assert created
    return stored


def _assert_no_receipts(storage: Storage, run: str = "demo") -> None:
    assert storage.ledger.list_receipts(run) == []
    assert storage.ledger.samples_by_shard(run) == {}
    assert storage.ledger.leaderboard(run, include_unverified=True) == []
    assert storage.ledger.contributors_between(run, None, T0 + timedelta(days=365)) == []


def test_create_get_and_list_runs(storage: Storage, clock: FakeClock) -> None:
    assert storage.runs.list_runs() == []
    assert storage.runs.newest_run() is None
    first = _create_run(storage, "first")
    clock.advance(1)
    second = _create_run(storage, "second")

    assert first.created_at == T0 and first.created_at.tzinfo == timezone.utc
    assert storage.runs.get_run("first") == first
    assert storage.runs.get_run("second").spec_hash == "hash-second"
    assert storage.runs.list_runs() == [first, second]
    assert storage.runs.newest_run() == second


def test_non_utc_clock_is_stored_as_utc(open_storage) -> None:
    plus_two = timezone(timedelta(hours=2))
    storage = open_storage(clock=lambda: datetime(2025, 1, 1, 14, 0, tzinfo=plus_two))
    run = _create_run(storage)
    assert storage.runs.get_run("demo").created_at == run.created_at == T0
    assert storage.runs.get_run("demo").created_at.utcoffset() == timedelta(0)


def test_duplicate_run_is_rejected_and_original_kept(storage: Storage) -> None:
    original = _create_run(storage, spec_json='{"lr": 0.001}')
    with pytest.raises(RunExistsError, match="run 'demo' already exists"):
        _create_run(storage, spec_json='{"lr": 0.5}')
    assert storage.runs.get_run("demo") == original
    assert storage.runs.list_runs() == [original]


def test_unknown_run_is_reported(storage: Storage) -> None:
    with pytest.raises(UnknownRunError, match="no run named 'nope'"):
        storage.runs.get_run("nope")
    with pytest.raises(UnknownRunError):
        _register(storage, run="nope")
    for query in (storage.ledger.samples_by_shard, storage.ledger.latest_epoch_by_shard, storage.ledger.list_receipts, storage.ledger.leaderboard,
                  storage.versions.list_versions, storage.versions.next_version_number, storage.versions.get_version):
        with pytest.raises(UnknownRunError):
            query("nope")
    with pytest.raises(UnknownRunError):
        storage.ledger.contributors_between("nope", None, T0)
    with pytest.raises(UnknownRunError):
        storage.ledger.add_receipt(_receipt(run="nope"))
    with pytest.raises(UnknownRunError):
        storage.runs.live_workers("nope", 10)
    with pytest.raises(UnknownRunError):
        storage.versions.add_version("nope", 1, "0" * 64, "/v1", 0, 0, 1.0, 2.0, [])


def test_worker_registration_and_liveness(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    alice = _register(storage, peer="alice", shards=[2, 5])
    bob = _register(storage, peer="bob")
    assert len(alice.worker_id) == 32 and alice.worker_id != bob.worker_id
    assert alice.shards == (2, 5) and alice.data_slice == 3 and alice.device == "cuda:0"
    assert alice.joined_at == alice.last_seen == T0 and not alice.left
    assert storage.runs.get_worker(alice.worker_id) == alice

    clock.advance(10)
    storage.runs.touch_worker(alice.worker_id)
    assert storage.runs.get_worker(alice.worker_id).last_seen == T0 + timedelta(seconds=10)
    assert storage.runs.get_worker(alice.worker_id).joined_at == T0
    assert [w.peer_id for w in storage.runs.live_workers("demo", seen_within_s=5)] == ["alice"]
    assert sorted(w.peer_id for w in storage.runs.live_workers("demo", seen_within_s=10)) == ["alice", "bob"]  # inclusive
    assert [w.peer_id for w in storage.runs.live_workers("demo", seen_within_s=0)] == ["alice"]

    storage.runs.mark_worker_left(alice.worker_id)
    assert storage.runs.get_worker(alice.worker_id).left
    assert storage.runs.live_workers("demo", seen_within_s=60) == [storage.runs.get_worker(bob.worker_id)]


def test_unknown_worker_is_reported(storage: Storage) -> None:
    _create_run(storage)
    for call in (storage.runs.get_worker, storage.runs.touch_worker, storage.runs.mark_worker_left):
        with pytest.raises(UnknownWorkerError):
            call("f" * 32)
    with pytest.raises(UnknownWorkerError):
        storage.ledger.add_receipt(_receipt(worker_id="f" * 32))
    _assert_no_receipts(storage)


def test_receipts_are_stored_summed_per_shard_and_touch_the_worker(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    _create_run(storage, "other")
    alice, bob = _register(storage, peer="alice"), _register(storage, peer="bob")
    stranger = _register(storage, run="other", peer="carol")
    assert storage.ledger.samples_by_shard("demo") == {} and storage.ledger.latest_epoch_by_shard("demo") == {}

    now = clock.advance(7)
    receipt = _receipt(alice, shard=0, samples=10, epoch=2)
    stored, created = storage.ledger.add_receipt(receipt)
    assert created
    assert stored == replace(receipt, received_at=now)  # storage stamps the arrival time itself
    assert storage.ledger.get_receipt(receipt.receipt_id) == stored
    assert storage.ledger.get_receipt("no-such-receipt") is None
    _add(storage, bob, shard=0, samples=5, epoch=4)
    _add(storage, alice, shard=3, samples=2**33, epoch=1)  # beyond 32-bit integers
    _add(storage, stranger, shard=0, samples=1000, epoch=9)

    assert storage.ledger.samples_by_shard("demo") == {0: 15, 3: 2**33}
    assert storage.ledger.latest_epoch_by_shard("demo") == {0: 4, 3: 1}
    assert storage.ledger.samples_by_shard("other") == {0: 1000}
    assert storage.runs.get_worker(alice.worker_id).last_seen == now

    clock.advance(5)
    _add(storage, peer="dave", shard=0, samples=1)  # a receipt need not name a worker registration
    assert storage.ledger.samples_by_shard("demo") == {0: 16, 3: 2**33}
    assert storage.runs.get_worker(alice.worker_id).last_seen == now

    with pytest.raises(UnknownWorkerError, match="is not peer"):
        storage.ledger.add_receipt(_receipt(stranger, run_name="demo"))  # the worker belongs to another run
    with pytest.raises(UnknownWorkerError, match="is not peer"):
        storage.ledger.add_receipt(_receipt(alice, peer_id="bob"))  # the worker belongs to another peer
    assert storage.ledger.samples_by_shard("demo") == {0: 16, 3: 2**33}
    assert storage.runs.get_worker(alice.worker_id).last_seen == now


def test_receipt_times_are_stored_as_utc(storage: Storage) -> None:
    _create_run(storage)
    plus_two = timezone(timedelta(hours=2))
    started = datetime(2025, 1, 1, 9, 0, tzinfo=plus_two)  # 07:00 UTC, before every automatic interval
    stored = _add(storage, started_at=started, ended_at=started + timedelta(seconds=90))
    assert stored.started_at == T0 - timedelta(hours=5) and stored.started_at.utcoffset() == timedelta(0)
    assert storage.ledger.get_receipt(stored.receipt_id).started_at.utcoffset() == timedelta(0)
    assert storage.ledger.get_receipt(stored.receipt_id).ended_at == T0 - timedelta(hours=5) + timedelta(seconds=90)


@pytest.mark.parametrize(
    "bad",
    [
        {"samples": -1},
        {"steps": -1},
        {"epoch": -1},
        {"tokens": -1},
        {"shard": -1},
        {"compute_seconds": -0.5},
        {"compute_seconds": math.inf},
        {"compute_seconds": math.nan},
        {"loss": math.nan},
        {"loss": math.inf},
        {"loss": -math.inf},
        {"status": "accepted"},
    ],
)
def test_invalid_receipts_are_rejected_and_nothing_stored(storage: Storage, clock: FakeClock, bad) -> None:
    _create_run(storage)
    worker = _register(storage)
    clock.advance(5)
    with pytest.raises(ValueError, match=next(iter(bad))):
        storage.ledger.add_receipt(_receipt(worker, **bad))
    _assert_no_receipts(storage)
    assert storage.runs.get_worker(worker.worker_id).last_seen == T0


_START = T0 - timedelta(hours=1)


@pytest.mark.parametrize(
    "started, ended, message",
    [
        (_START, _START - timedelta(microseconds=1), "must end after it starts"),
        (_START, _START - timedelta(seconds=30), "must end after it starts"),
        # zero length: it would overlap nothing and could be claimed any number of times
        (_START, _START, "must end after it starts"),
        (_START.replace(tzinfo=None), _START + timedelta(seconds=30), "started_at must be timezone-aware"),
        (_START, (_START + timedelta(seconds=30)).replace(tzinfo=None), "ended_at must be timezone-aware"),
    ],
)
def test_receipt_intervals_must_be_timezone_aware_and_ordered(
    storage: Storage, clock: FakeClock, started: datetime, ended: datetime, message: str
) -> None:
    _create_run(storage)
    worker = _register(storage)
    clock.advance(5)
    with pytest.raises(ValueError, match=message):
        storage.ledger.add_receipt(_receipt(worker, started_at=started, ended_at=ended))
    _assert_no_receipts(storage)
    assert storage.runs.get_worker(worker.worker_id).last_seen == T0


def test_the_same_receipt_twice_is_stored_once(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    worker = _register(storage)
    receipt = _receipt(worker, samples=64, compute_seconds=8.0)
    first, created = storage.ledger.add_receipt(receipt)
    assert created and first.received_at == T0

    clock.advance(30)
    again, created = storage.ledger.add_receipt(receipt)
    assert not created
    assert again == first  # the stored receipt, received at its first delivery
    # A resend that the ledger classified differently still returns (and keeps) the stored receipt.
    resent, created = storage.ledger.add_receipt(replace(receipt, status="verified", status_reason="later evidence"))
    assert not created and resent == first

    assert storage.ledger.get_receipt(receipt.receipt_id) == first
    assert storage.ledger.list_receipts("demo") == [first]
    assert storage.ledger.samples_by_shard("demo") == {0: 64}
    [row] = storage.ledger.leaderboard("demo", include_unverified=True)
    assert (row.samples, row.receipts, row.compute_seconds) == (64, 1, 8.0)


def test_the_same_id_with_other_content_is_a_conflict(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    worker = _register(storage)
    receipt = _receipt(worker, samples=64)
    stored, _ = storage.ledger.add_receipt(receipt)
    clock.advance(10)

    forged = _receipt(worker, receipt_id=receipt.receipt_id, samples=6400)  # new payload and signature
    with pytest.raises(ReceiptConflictError, match=receipt.receipt_id):
        storage.ledger.add_receipt(forged)
    with pytest.raises(ReceiptConflictError, match=receipt.receipt_id):
        storage.ledger.add_receipt(replace(receipt, signature=receipt.signature + "0"))  # the payload alone matches
    with pytest.raises(ReceiptConflictError, match=receipt.receipt_id):
        storage.ledger.add_receipt(replace(receipt, payload=receipt.payload + " "))  # the signature alone matches

    assert storage.ledger.get_receipt(receipt.receipt_id) == stored
    assert storage.ledger.list_receipts("demo") == [stored]
    assert storage.ledger.samples_by_shard("demo") == {0: 64}


def test_overlapping_intervals_of_one_peer_on_one_shard_are_rejected(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    _create_run(storage, "other")
    alice, bob = _register(storage, peer="alice"), _register(storage, peer="bob")

    def at(seconds: float) -> datetime:
        return _START + timedelta(seconds=seconds)

    first = _add(storage, alice, shard=0, samples=100, started_at=at(0), ended_at=at(60))
    clock.advance(5)
    restarted = _register(storage, peer="alice")  # a new registration of the same peer claims the same time
    tiny = timedelta(microseconds=1)
    for worker, started, ended in [
        (alice, at(30), at(90)),  # overlaps the end
        (alice, at(-30), at(30)),  # overlaps the start
        (alice, at(10), at(20)),  # inside
        (alice, at(-10), at(70)),  # around
        (alice, at(0), at(60)),  # the same interval under another id
        (alice, at(60) - tiny, at(120)),
        (alice, at(-60), at(0) + tiny),
        (restarted, at(30), at(90)),
        (None, at(30), at(90)),
    ]:
        receipt = _receipt(worker, peer="alice", shard=0, samples=1000, started_at=started, ended_at=ended)
        with pytest.raises(OverlappingReceiptError, match=first.receipt_id):
            storage.ledger.add_receipt(receipt)
        assert storage.ledger.get_receipt(receipt.receipt_id) is None
    assert storage.ledger.samples_by_shard("demo") == {0: 100}
    assert storage.runs.get_worker(restarted.worker_id).last_seen == T0 + timedelta(seconds=5)

    _add(storage, alice, shard=1, samples=1, started_at=at(0), ended_at=at(60))  # another shard
    _add(storage, bob, shard=0, samples=2, started_at=at(0), ended_at=at(60))  # another peer
    _add(storage, restarted, shard=0, samples=4, started_at=at(60), ended_at=at(120))  # starts as the first ends
    _add(storage, alice, shard=0, samples=8, started_at=at(-60), ended_at=at(0))  # ends as the first starts
    other_alice = _register(storage, run="other", peer="alice")
    _add(storage, other_alice, shard=0, samples=16, started_at=at(0), ended_at=at(60))  # another run

    assert storage.ledger.samples_by_shard("demo") == {0: 114, 1: 1}
    assert storage.ledger.samples_by_shard("other") == {0: 16}
    assert len(storage.ledger.list_receipts("demo", peer_id="alice", shard=0)) == 3


def test_disputed_receipts_are_not_counted(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    alice, bob, carol = (_register(storage, peer=peer) for peer in ("alice", "bob", "carol"))
    t1 = clock.advance(1)
    _add(storage, alice, shard=0, samples=10, epoch=1, status="verified")
    _add(storage, bob, shard=0, samples=1000, epoch=7, compute_seconds=9.0, status="disputed",
         status_reason="claims epoch 7")
    lying = _add(storage, carol, shard=1, samples=500, epoch=5, compute_seconds=4.0)
    assert storage.ledger.samples_by_shard("demo") == {0: 10, 1: 500}
    assert storage.ledger.contributors_between("demo", None, t1) == ["alice", "carol"]

    storage.ledger.set_receipt_status(lying.receipt_id, "disputed", "too fast for its DHT records")
    assert storage.ledger.samples_by_shard("demo") == {0: 10}
    assert storage.ledger.latest_epoch_by_shard("demo") == {0: 1}
    assert storage.ledger.contributors_between("demo", None, t1) == ["alice"]
    for include_unverified in (False, True):
        board = {row.peer_id: row for row in storage.ledger.leaderboard("demo", include_unverified)}
        assert board["alice"].samples == 10
        for peer in ("bob", "carol"):
            assert (board[peer].samples, board[peer].verified_samples, board[peer].compute_seconds) == (0, 0, 0.0)
            assert board[peer].receipts == board[peer].disputed_receipts == 1
    assert {r.peer_id for r in storage.ledger.list_receipts("demo", status="disputed")} == {"bob", "carol"}


def test_leaderboard_counts_verified_receipts_and_unverified_on_request(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    _create_run(storage, "other")
    alice = _register(storage, peer="alice")
    storage.runs.register_worker("demo", "bob", "Bobby (old name)", [0], data_slice=0, device="cpu")
    clock.advance(1)
    bob = storage.runs.register_worker("demo", "bob", "Bob", [0, 1], data_slice=1, device="cuda:0")  # newest name wins
    stranger = _register(storage, run="other", peer="alice")
    carol, dave = "carol" + "x" * 40, "dave"
    assert storage.ledger.leaderboard("demo") == []

    def at(seconds: float) -> datetime:
        return _START + timedelta(seconds=seconds)

    _add(storage, alice, samples=1000, compute_seconds=100.0, status="disputed", started_at=at(0), ended_at=at(60))
    _add(storage, alice, samples=100, compute_seconds=10.0, status="verified", started_at=at(100), ended_at=at(160))
    _add(storage, alice, shard=1, samples=50, compute_seconds=5.0, started_at=at(200), ended_at=at(260))
    _add(storage, bob, samples=120, compute_seconds=12.0, status="verified", started_at=at(0), ended_at=at(30))
    _add(storage, peer=carol, samples=500, compute_seconds=50.0, started_at=at(0), ended_at=at(90))
    _add(storage, peer=dave, samples=70, compute_seconds=7.0, status="disputed", started_at=at(500), ended_at=at(530))
    _add(storage, stranger, samples=10**6, status="verified")  # another run

    alice_row = LeaderboardRow("alice", "name of alice", samples=100, verified_samples=100, compute_seconds=10.0,
                               receipts=3, disputed_receipts=1, last_seen=at(260))
    bob_row = LeaderboardRow("bob", "Bob", samples=120, verified_samples=120, compute_seconds=12.0, receipts=1,
                             disputed_receipts=0, last_seen=at(30))
    carol_row = LeaderboardRow(carol, carol[:12], samples=0, verified_samples=0, compute_seconds=0.0, receipts=1,
                               disputed_receipts=0, last_seen=at(90))
    dave_row = LeaderboardRow(dave, dave, samples=0, verified_samples=0, compute_seconds=0.0, receipts=1,
                              disputed_receipts=1, last_seen=at(530))
    board = storage.ledger.leaderboard("demo")
    assert board == [bob_row, alice_row, carol_row, dave_row]  # ties by peer id
    assert storage.ledger.leaderboard("demo", include_unverified=False) == board
    assert board[0].last_seen.utcoffset() == timedelta(0)

    assert storage.ledger.leaderboard("demo", include_unverified=True) == [
        replace(carol_row, samples=500, compute_seconds=50.0),
        replace(alice_row, samples=150, compute_seconds=15.0),
        bob_row,
        dave_row,
    ]
    assert [row.peer_id for row in storage.ledger.leaderboard("other")] == ["alice"]


def test_set_receipt_status_records_the_check(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    worker = _register(storage)
    receipt = _add(storage, worker, samples=40)
    other = _add(storage, worker, samples=2)
    assert (receipt.status, receipt.status_reason, receipt.checked_at) == ("unverified", "", None)

    checked = clock.advance(40)
    storage.ledger.set_receipt_status(receipt.receipt_id, "verified", "matches the DHT")
    verified = replace(receipt, status="verified", status_reason="matches the DHT", checked_at=checked)
    assert storage.ledger.get_receipt(receipt.receipt_id) == verified
    assert storage.ledger.get_receipt(other.receipt_id) == other
    assert storage.ledger.leaderboard("demo")[0].verified_samples == 40

    clock.advance(1)
    with pytest.raises(ValueError, match="status"):
        storage.ledger.set_receipt_status(receipt.receipt_id, "accepted", "not a receipt status")
    assert storage.ledger.get_receipt(receipt.receipt_id) == verified
    with pytest.raises(StorageError, match="no receipt"):
        storage.ledger.set_receipt_status("no-such-receipt", "verified", "")

    rechecked = clock.advance(1)
    storage.ledger.set_receipt_status(receipt.receipt_id, "disputed", "the DHT moved on")
    assert storage.ledger.get_receipt(receipt.receipt_id) == replace(
        receipt, status="disputed", status_reason="the DHT moved on", checked_at=rechecked)
    assert storage.ledger.samples_by_shard("demo") == {0: 2}


def test_list_receipts_filters_and_puts_the_newest_interval_first(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    alice, bob = _register(storage, peer="alice"), _register(storage, peer="bob")
    a0 = _add(storage, alice, shard=0)
    since = clock.advance(10)
    b1 = _add(storage, bob, shard=1)
    a1 = _add(storage, alice, shard=1, status="verified")  # _receipt times each receipt after the one before

    assert storage.ledger.list_receipts("demo") == [a1, b1, a0]
    assert storage.ledger.list_receipts("demo", peer_id="alice") == [a1, a0]
    assert storage.ledger.list_receipts("demo", shard=1) == [a1, b1]
    assert storage.ledger.list_receipts("demo", peer_id="alice", shard=0) == [a0]
    assert storage.ledger.list_receipts("demo", status="verified") == [a1]
    assert storage.ledger.list_receipts("demo", status="disputed") == []
    assert storage.ledger.list_receipts("demo", received_since=since) == [a1, b1]
    assert storage.ledger.list_receipts("demo", received_since=since + timedelta(microseconds=1)) == []
    assert storage.ledger.list_receipts("demo", limit=2) == [a1, b1]
    with pytest.raises(ValueError, match="timezone-aware"):
        storage.ledger.list_receipts("demo", received_since=since.replace(tzinfo=None))


def test_contributors_between_is_start_exclusive_end_inclusive(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    zed, amy = _register(storage, peer="zed"), _register(storage, peer="amy")
    t1 = clock.advance(1)
    _add(storage, zed)
    t2 = clock.advance(1)
    _add(storage, amy)
    t3 = clock.advance(1)
    _add(storage, zed)
    tiny = timedelta(microseconds=1)

    assert storage.ledger.contributors_between("demo", None, t1) == ["zed"]
    assert storage.ledger.contributors_between("demo", None, t1 - tiny) == []
    assert storage.ledger.contributors_between("demo", t1, t2) == ["amy"]
    assert storage.ledger.contributors_between("demo", t1 - tiny, t2) == ["amy", "zed"]  # sorted, distinct
    assert storage.ledger.contributors_between("demo", None, t3) == ["amy", "zed"]
    assert storage.ledger.contributors_between("demo", t2, t3) == ["zed"]
    assert storage.ledger.contributors_between("demo", t3, t3 + timedelta(days=1)) == []
    # The same instant written in another timezone selects the same rows.
    assert storage.ledger.contributors_between("demo", None, t2.astimezone(timezone(timedelta(hours=-5)))) == ["amy", "zed"]
    with pytest.raises(ValueError, match="timezone-aware"):
        storage.ledger.contributors_between("demo", None, t3.replace(tzinfo=None))


def test_observations_are_upserted_per_run_shard_peer_and_epoch(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    _create_run(storage, "other")
    storage.ledger.record_observation("demo", 0, "alice", 3, samples_per_second=5.0, samples_accumulated=100, key_bound=True)
    clock.advance(10)
    storage.ledger.record_observation("demo", 0, "alice", 3, samples_per_second=2.5, samples_accumulated=300, key_bound=False)
    t20 = clock.advance(10)
    storage.ledger.record_observation("demo", 0, "alice", 3, samples_per_second=4.0, samples_accumulated=200, key_bound=True)
    storage.ledger.record_observation("demo", 0, "alice", 4, samples_per_second=1.0, samples_accumulated=10, key_bound=True)
    storage.ledger.record_observation("demo", 0, "bob", 3, samples_per_second=7.0, samples_accumulated=70, key_bound=True)
    storage.ledger.record_observation("demo", 1, "alice", 3, samples_per_second=9.0, samples_accumulated=90, key_bound=True)
    storage.ledger.record_observation("other", 0, "alice", 3, samples_per_second=8.0, samples_accumulated=80, key_bound=True)

    # The highest figures seen at the epoch are kept; one record not bound to the peer's key is enough to doubt it.
    alice_3 = ObservationRecord("demo", 0, "alice", 3, 5.0, 300, False, first_seen=T0, last_seen=t20)
    alice_4 = ObservationRecord("demo", 0, "alice", 4, 1.0, 10, True, first_seen=t20, last_seen=t20)
    bob_3 = ObservationRecord("demo", 0, "bob", 3, 7.0, 70, True, first_seen=t20, last_seen=t20)
    assert storage.ledger.observations("demo", 0) == [alice_3, bob_3, alice_4]  # by epoch, then peer
    assert storage.ledger.observations("demo", 0, "alice") == [alice_3, alice_4]
    assert storage.ledger.observations("demo", 0, "carol") == []
    assert storage.ledger.observations("demo", 1) == [ObservationRecord("demo", 1, "alice", 3, 9.0, 90, True, t20, t20)]
    assert storage.ledger.observations("demo", 2) == []
    assert [o.samples_per_second for o in storage.ledger.observations("other", 0)] == [8.0]
    assert storage.ledger.observations("demo", 0)[0].first_seen.utcoffset() == timedelta(0)

    for bad in ({"samples_per_second": -1.0}, {"samples_per_second": math.nan}, {"samples_accumulated": -1},
                {"epoch": -1}, {"shard": -1}):
        values = dict(shard=0, peer_id="alice", epoch=3, samples_per_second=99.0, samples_accumulated=999,
                      key_bound=True) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            storage.ledger.record_observation("demo", **values)
    assert storage.ledger.observations("demo", 0, "alice") == [alice_3, alice_4]


def test_observations_filter_by_the_time_they_were_seen(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    storage.ledger.record_observation("demo", 0, "early", 1, 1.0, 10, True)  # seen over [T0, T0+10s]
    clock.advance(10)
    storage.ledger.record_observation("demo", 0, "early", 1, 1.0, 20, True)
    clock.advance(10)
    storage.ledger.record_observation("demo", 0, "late", 2, 1.0, 10, True)  # seen over [T0+20s, T0+30s]
    clock.advance(10)
    storage.ledger.record_observation("demo", 0, "late", 2, 1.0, 20, True)

    def at(seconds: float) -> datetime:
        return T0 + timedelta(seconds=seconds)

    def peers(start: datetime | None, end: datetime | None, peer_id: str | None = None) -> list[str]:
        return [o.peer_id for o in storage.ledger.observations("demo", 0, peer_id, start=start, end=end)]

    tiny = timedelta(microseconds=1)
    assert peers(None, None) == ["early", "late"]
    assert peers(at(10), at(20)) == ["early", "late"]  # both ends inclusive
    assert peers(at(10) + tiny, at(20) - tiny) == []  # the gap between them
    assert peers(at(5), at(5)) == ["early"]
    assert peers(at(25), None) == ["late"]
    assert peers(at(30) + tiny, None) == []
    assert peers(None, at(15)) == ["early"]
    assert peers(None, at(0) - tiny) == []
    assert peers(at(-100), at(100), "late") == ["late"]
    assert peers(at(10).astimezone(timezone(timedelta(hours=-5))), at(20)) == ["early", "late"]
    with pytest.raises(ValueError, match="timezone-aware"):
        peers(at(0).replace(tzinfo=None), None)
    with pytest.raises(ValueError, match="timezone-aware"):
        peers(None, at(0).replace(tzinfo=None))


def test_highest_observed_epoch_per_run_and_shard(storage: Storage) -> None:
    _create_run(storage)
    _create_run(storage, "other")
    assert storage.ledger.highest_observed_epoch("demo", 0) is None
    storage.ledger.record_observation("demo", 0, "alice", 3, 1.0, 1, True)
    storage.ledger.record_observation("demo", 0, "bob", 7, 1.0, 1, False)
    storage.ledger.record_observation("demo", 0, "alice", 5, 1.0, 1, True)
    storage.ledger.record_observation("demo", 1, "alice", 11, 1.0, 1, True)
    storage.ledger.record_observation("other", 0, "carol", 20, 1.0, 1, True)
    assert storage.ledger.highest_observed_epoch("demo", 0) == 7
    assert storage.ledger.highest_observed_epoch("demo", 1) == 11
    assert storage.ledger.highest_observed_epoch("demo", 2) is None
    assert storage.ledger.highest_observed_epoch("other", 0) == 20


def test_workers_of_peer_are_listed_newest_first(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    _create_run(storage, "other")
    first = _register(storage, peer="alice")
    clock.advance(5)
    _register(storage, peer="bob")
    second = _register(storage, peer="alice", shards=(2,))
    clock.advance(5)
    third = _register(storage, peer="alice", shards=(1,))
    _register(storage, run="other", peer="alice")

    assert storage.runs.workers_of_peer("demo", "alice") == [third, second, first]
    assert [w.peer_id for w in storage.runs.workers_of_peer("demo", "bob")] == ["bob"]
    assert storage.runs.workers_of_peer("demo", "carol") == []
    assert len(storage.runs.workers_of_peer("other", "alice")) == 1


def test_versions_are_numbered_per_run_and_duplicates_rejected(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    _create_run(storage, "other")
    assert storage.versions.next_version_number("demo") == 1
    assert storage.versions.get_version("demo") is None and storage.versions.list_versions("demo") == []

    v1 = storage.versions.add_version("demo", 1, "a" * 64, "/adapters/v1", 0, 100, 2.0, 2.5, ["peer-b", "peer-a"])
    clock.advance(1)
    v2 = storage.versions.add_version("demo", 2, "b" * 64, "/adapters/v2", 1, 250, 1.8, 2.5, ("peer-a",))
    assert v1.contributors == ("peer-b", "peer-a") and v1.created_at == T0
    assert storage.versions.next_version_number("demo") == 3
    assert storage.versions.list_versions("demo") == [v1, v2]
    assert storage.versions.get_version("demo") == v2
    assert storage.versions.get_version("demo", 1) == v1
    assert storage.versions.get_version("demo", 7) is None

    with pytest.raises(VersionExistsError, match="already has version 1"):
        storage.versions.add_version("demo", 1, "c" * 64, "/adapters/other", 5, 1, 0.1, 0.2, [])
    assert storage.versions.get_version("demo", 1) == v1
    assert storage.versions.next_version_number("other") == 1
    storage.versions.add_version("other", 1, "d" * 64, "/other/v1", 0, 1, 1.0, 1.0, [])
    with pytest.raises(ValueError, match="eval_loss"):
        storage.versions.add_version("demo", 3, "e" * 64, "/adapters/v3", 0, 1, math.nan, 1.0, [])
    assert storage.versions.next_version_number("demo") == 3


def test_reopening_upgrades_idempotently_and_sees_data(open_storage, db_url: str) -> None:
    first = open_storage()
    run = _create_run(first)
    worker = _register(first)
    first.close()

    second = open_storage()
    assert second.runs.get_run("demo") == run
    assert second.runs.get_worker(worker.worker_id) == worker
    third = open_storage()  # while the second is still open
    assert third.runs.list_runs() == [run]


def test_migrations_match_the_models(storage: Storage, db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_opening_storage_leaves_application_logging_alone(db_url: str) -> None:
    app_logger = logging.getLogger("nomoat.test_storage")
    root_handlers = list(logging.getLogger().handlers)
    with Storage(db_url):
        pass
    assert not app_logger.disabled
    assert logging.getLogger().handlers == root_handlers


def test_upgrade_carries_contributions_over_as_receipts(db_url: str) -> None:
    engine = create_engine(db_url)
    config = Config()  # as Database._migrate sets it up, but stopping at the first revision
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
        postgres = engine.dialect.name == "postgresql"

        def at(seconds: float) -> datetime | str:
            value = T0 + timedelta(seconds=seconds)
            # How SQLAlchemy wrote UTC datetimes into SQLite: naive, with microseconds.
            return value if postgres else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")

        worker_id = "a" * 32
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO runs (name, spec_json, spec_hash, base_model_fingerprint, dataset_digest, created_at) "
                "VALUES ('demo', '{}', 'hash-demo', 'fingerprint', 'digest', :at)"), {"at": at(0)})
            connection.execute(text(
                "INSERT INTO workers (worker_id, run_name, peer_id, display_name, shards_json, data_slice, device, "
                "joined_at, last_seen, has_left) VALUES (:worker_id, 'demo', 'peer-legacy', 'old timer', '[0, 1]', "
                "0, 'cpu', :at, :at, :left)"), {"worker_id": worker_id, "at": at(0), "left": False})
            insert = text(
                "INSERT INTO contributions (id, worker_id, run_name, shard, samples, steps, epoch, loss, "
                "compute_seconds, created_at) VALUES (:id, :worker_id, 'demo', :shard, :samples, :steps, :epoch, "
                ":loss, :compute_seconds, :at)")
            connection.execute(insert, [
                dict(id=3, worker_id=worker_id, shard=0, samples=64, steps=4, epoch=2, loss=2.25, compute_seconds=12.5,
                     at=at(60)),
                dict(id=8, worker_id=worker_id, shard=1, samples=2**33, steps=8, epoch=5, loss=1.75,
                     compute_seconds=30.0, at=at(120)),
            ])

        storage = Storage(db_url, clock=FakeClock(T0 + timedelta(days=1)))  # upgrades to head
        try:
            legacy = ReceiptRecord(
                receipt_id="legacy-3", run_name="demo", shard=0, peer_id="peer-legacy", worker_id=worker_id,
                epoch=2, steps=4, samples=64, tokens=0, compute_seconds=12.5, loss=2.25,
                started_at=T0 + timedelta(seconds=60), ended_at=T0 + timedelta(seconds=60),
                received_at=T0 + timedelta(seconds=60), payload="", public_key="", signature="", status="unverified",
                status_reason="recorded before signed receipts", checked_at=None)
            assert storage.ledger.get_receipt("legacy-3") == legacy
            assert [r.receipt_id for r in storage.ledger.list_receipts("demo")] == ["legacy-8", "legacy-3"]
            assert storage.ledger.get_receipt("legacy-8").samples == 2**33
            assert {r.status for r in storage.ledger.list_receipts("demo")} == {"unverified"}
            assert storage.ledger.samples_by_shard("demo") == {0: 64, 1: 2**33}
            assert storage.ledger.latest_epoch_by_shard("demo") == {0: 2, 1: 5}
            assert storage.ledger.contributors_between("demo", None, T0 + timedelta(seconds=60)) == ["peer-legacy"]
            assert [(row.samples, row.verified_samples) for row in storage.ledger.leaderboard("demo")] == [(0, 0)]
            [row] = storage.ledger.leaderboard("demo", include_unverified=True)
            assert (row.display_name, row.samples, row.receipts, row.compute_seconds) == ("old timer", 64 + 2**33, 2,
                                                                                          42.5)
            # New receipts join the carried-over ones.
            stored = _add(storage, storage.runs.get_worker(worker_id), shard=0, samples=6)
            assert stored.received_at == T0 + timedelta(days=1)
            assert storage.ledger.samples_by_shard("demo") == {0: 70, 1: 2**33}
        finally:
            storage.close()
        assert "contributions" not in inspect(engine).get_table_names()
        assert {"receipts", "progress_observations"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_keeps_versions_published_before_manifests(db_url: str) -> None:
    engine = create_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0002")
        at = T0 if engine.dialect.name == "postgresql" else T0.strftime("%Y-%m-%d %H:%M:%S.%f")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO runs (name, spec_json, spec_hash, base_model_fingerprint, dataset_digest, created_at) "
                "VALUES ('demo', '{}', 'hash-demo', 'fingerprint', 'digest', :at)"), {"at": at})
            connection.execute(text(
                "INSERT INTO adapter_versions (run_name, version, sha256, path, epoch, samples, eval_loss, "
                "base_eval_loss, contributors_json, created_at) VALUES ('demo', 1, 'abc', '/store/demo/v000001', 3, "
                "96, 1.5, 2.5, '[\"peer-a\"]', :at)"), {"at": at})
        storage = Storage(db_url, clock=FakeClock(T0 + timedelta(days=1)))  # upgrades to head
        try:
            old = storage.versions.get_version("demo", 1)
            assert (old.sha256, old.epoch, old.contributors) == ("abc", 3, ("peer-a",))
            assert (old.manifest, old.manifest_signature, old.release, old.collected_at) == (None, None, False, None)
            assert storage.versions.set_release("demo", 1).release
            with pytest.raises(ValueError, match="is a release"):
                storage.versions.mark_collected("demo", 1)
            assert storage.versions.rejected_snapshots("demo") == []
            storage.versions.add_rejected_snapshot("demo", "eval loss nan", epoch=4, eval_loss=float("nan"))
            [rejected] = storage.versions.rejected_snapshots("demo")
            assert (rejected.reason, rejected.epoch, rejected.eval_loss) == ("eval loss nan", 4, None)
        finally:
            storage.close()
    finally:
        engine.dispose()


def test_concurrent_receipts_with_resends_count_each_id_once(
    open_storage, db_url: str, request: pytest.FixtureRequest
) -> None:
    storage = open_storage()  # the real clock: timestamps from many threads
    _create_run(storage)
    threads, per_thread = 16, 50
    workers = [_register(storage, peer=f"peer-{i}") for i in range(threads)]
    own = [[_receipt(workers[i], shard=i % 3, samples=call + 1) for call in range(per_thread)] for i in range(threads)]
    # Every 10th call, the two threads of a pair send the same receipt at once (a resend racing its first delivery).
    pair_workers = [_register(storage, peer=f"pair-{pair}") for pair in range(threads // 2)]
    shared = {(call, pair): _receipt(pair_workers[pair], shard=pair % 3, samples=1000 * (call + 1) + pair)
              for call in range(0, per_thread, 10) for pair in range(threads // 2)}
    barrier = threading.Barrier(threads)

    def send(index: int) -> list[tuple[str, bool]]:
        try:
            return send_all(index)
        except BaseException:
            barrier.abort()  # the other threads stop waiting for this one
            raise

    def send_all(index: int) -> list[tuple[str, bool]]:
        results = []
        for call, receipt in enumerate(own[index]):
            if (call, index // 2) in shared:
                barrier.wait(timeout=60)
                stored, created = storage.ledger.add_receipt(shared[call, index // 2])
                results.append((stored.receipt_id, created))
            stored, created = storage.ledger.add_receipt(receipt)
            assert stored.receipt_id == receipt.receipt_id and stored.samples == receipt.samples
            results.append((stored.receipt_id, created))
            if call % 5 == 4:  # the outbox sends an earlier receipt again
                again, created = storage.ledger.add_receipt(own[index][call - 2])
                assert again == storage.ledger.get_receipt(again.receipt_id)
                results.append((again.receipt_id, created))
        return results

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(send, index) for index in range(threads)]
    errors = [future.exception() for future in futures if future.exception() is not None]
    # The threads that only saw the barrier break tell nothing: raise what broke it.
    errors.sort(key=lambda error: isinstance(error, threading.BrokenBarrierError))
    if errors:
        raise errors[0]
    results = [result for future in futures for result in future.result()]

    unique = [receipt for receipts in own for receipt in receipts] + list(shared.values())
    created = Counter(receipt_id for receipt_id, was_created in results if was_created)
    assert created == Counter(receipt.receipt_id for receipt in unique)  # each id created exactly once
    assert len(results) == len(unique) + threads * (per_thread // 5) + len(shared)  # the rest were duplicates
    expected: Counter[int] = Counter()
    for receipt in unique:
        expected[receipt.shard] += receipt.samples
    per_worker = sum(range(1, per_thread + 1))
    assert expected[1] == 5 * per_worker + sum(1000 * (c + 1) + p for c in range(0, 50, 10) for p in (1, 4, 7))
    assert storage.ledger.samples_by_shard("demo") == dict(expected)
    assert len(storage.ledger.list_receipts("demo")) == len(unique)
    assert storage.ledger.contributors_between("demo", None, datetime.now(timezone.utc)) == sorted(
        w.peer_id for w in workers + pair_workers)


def test_overlapping_receipts_arriving_together_count_once(open_storage) -> None:
    """Two different receipts claiming the same time, delivered at the same moment: exactly one is stored."""
    storage = open_storage()
    _create_run(storage)
    worker = _register(storage)
    for round_index in range(15):
        started = T0 - timedelta(days=1) + timedelta(minutes=round_index)
        pair = [_receipt(worker, samples=10 + side, started_at=started + timedelta(seconds=side),
                         ended_at=started + timedelta(seconds=30 + side)) for side in range(2)]
        barrier = threading.Barrier(2)

        def deliver(receipt: ReceiptRecord) -> str:
            barrier.wait()
            try:
                storage.ledger.add_receipt(receipt)
                return "stored"
            except OverlappingReceiptError:
                return "overlap"

        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = sorted(pool.map(deliver, pair))
        assert outcomes == ["overlap", "stored"], round_index
    assert len(storage.ledger.list_receipts("demo")) == 15


def test_concurrent_identical_observations_are_recorded_once(open_storage) -> None:
    storage = open_storage()
    _create_run(storage)
    barrier = threading.Barrier(8)

    def record(rate: float) -> None:
        barrier.wait()
        storage.ledger.record_observation("demo", 0, "peer-a", 3, rate, 16, True)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(record, [float(rate) for rate in range(8)]))
    [observation] = storage.ledger.observations("demo", 0)
    assert observation.samples_per_second == 7.0
