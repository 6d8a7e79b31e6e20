"""Contract tests of the contribution ledger's store (``Storage.ledger``: receipts, DHT progress observations and
what is counted from them), on SQLite and on PostgreSQL when one answers at 127.0.0.1:5432 (database ``test``; see
conftest.py). The concurrency tests prove the per-peer-shard lock, the overlap check and the observation upsert."""

from __future__ import annotations

import math
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from coordinator.storage import (
    LeaderboardRow,
    ObservationRecord,
    OverlappingReceiptError,
    PeerContext,
    ReceiptConflictError,
    ReceiptRecord,
    Storage,
    StorageError,
    UnknownRunError,
    UnknownWorkerError,
    WorkerRecord,
)
from tests.storage_contract import (  # noqa: F401 (fixtures)
    START,
    T0,
    FakeClock,
    add,
    assert_no_receipts,
    clock,
    create_run,
    get_receipt,
    get_worker,
    open_storage,
    receipt_of,
    register,
    storage,
)


def test_unknown_run_is_reported(storage: Storage) -> None:
    for query in (storage.ledger.samples_by_shard, storage.ledger.latest_epoch_by_shard, storage.ledger.list_receipts,
                  storage.ledger.leaderboard):
        with pytest.raises(UnknownRunError):
            query("nope")
    with pytest.raises(UnknownRunError):
        storage.ledger.contributors_between("nope", None, T0)
    with pytest.raises(UnknownRunError):
        storage.ledger.add_receipt(receipt_of(run="nope"))


def test_receipt_of_an_unknown_worker_is_rejected(storage: Storage) -> None:
    create_run(storage)
    with pytest.raises(UnknownWorkerError):
        storage.ledger.add_receipt(receipt_of(worker_id="f" * 32))
    assert_no_receipts(storage)


def test_receipts_are_stored_summed_per_shard_and_touch_the_worker(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    create_run(storage, "other")
    alice, bob = register(storage, peer="alice"), register(storage, peer="bob")
    stranger = register(storage, run="other", peer="carol")
    assert storage.ledger.samples_by_shard("demo") == {} and storage.ledger.latest_epoch_by_shard("demo") == {}

    now = clock.advance(7)
    receipt = receipt_of(alice, shard=0, samples=10, epoch=2)
    stored, created = storage.ledger.add_receipt(receipt)
    assert created
    assert stored == replace(receipt, received_at=now)  # storage stamps the arrival time itself
    assert get_receipt(storage, receipt.receipt_id) == stored
    assert get_receipt(storage, "no-such-receipt") is None
    add(storage, bob, shard=0, samples=5, epoch=4)
    add(storage, alice, shard=3, samples=2**33, epoch=1)  # beyond 32-bit integers
    add(storage, stranger, shard=0, samples=1000, epoch=9)

    assert storage.ledger.samples_by_shard("demo") == {0: 15, 3: 2**33}
    assert storage.ledger.latest_epoch_by_shard("demo") == {0: 4, 3: 1}
    assert storage.ledger.samples_by_shard("other") == {0: 1000}
    assert get_worker(storage, alice.worker_id).last_seen == now

    clock.advance(5)
    add(storage, peer="dave", shard=0, samples=1)  # a receipt need not name a worker registration
    assert storage.ledger.samples_by_shard("demo") == {0: 16, 3: 2**33}
    assert get_worker(storage, alice.worker_id).last_seen == now

    with pytest.raises(UnknownWorkerError, match="is not peer"):
        storage.ledger.add_receipt(receipt_of(stranger, run_name="demo"))  # the worker belongs to another run
    with pytest.raises(UnknownWorkerError, match="is not peer"):
        storage.ledger.add_receipt(receipt_of(alice, peer_id="bob"))  # the worker belongs to another peer
    assert storage.ledger.samples_by_shard("demo") == {0: 16, 3: 2**33}
    assert get_worker(storage, alice.worker_id).last_seen == now


def test_receipt_times_are_stored_as_utc(storage: Storage) -> None:
    create_run(storage)
    plus_two = timezone(timedelta(hours=2))
    started = datetime(2025, 1, 1, 9, 0, tzinfo=plus_two)  # 07:00 UTC, before every automatic interval
    stored = add(storage, started_at=started, ended_at=started + timedelta(seconds=90))
    assert stored.started_at == T0 - timedelta(hours=5) and stored.started_at.utcoffset() == timedelta(0)
    assert get_receipt(storage, stored.receipt_id).started_at.utcoffset() == timedelta(0)
    assert get_receipt(storage, stored.receipt_id).ended_at == T0 - timedelta(hours=5) + timedelta(seconds=90)


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
    create_run(storage)
    worker = register(storage)
    clock.advance(5)
    with pytest.raises(ValueError, match=next(iter(bad))):
        storage.ledger.add_receipt(receipt_of(worker, **bad))
    assert_no_receipts(storage)
    assert get_worker(storage, worker.worker_id).last_seen == T0


@pytest.mark.parametrize(
    "started, ended, message",
    [
        (START, START - timedelta(microseconds=1), "must end after it starts"),
        (START, START - timedelta(seconds=30), "must end after it starts"),
        # zero length: it would overlap nothing and could be claimed any number of times
        (START, START, "must end after it starts"),
        (START.replace(tzinfo=None), START + timedelta(seconds=30), "started_at must be timezone-aware"),
        (START, (START + timedelta(seconds=30)).replace(tzinfo=None), "ended_at must be timezone-aware"),
    ],
)
def test_receipt_intervals_must_be_timezone_aware_and_ordered(
    storage: Storage, clock: FakeClock, started: datetime, ended: datetime, message: str
) -> None:
    create_run(storage)
    worker = register(storage)
    clock.advance(5)
    with pytest.raises(ValueError, match=message):
        storage.ledger.add_receipt(receipt_of(worker, started_at=started, ended_at=ended))
    assert_no_receipts(storage)
    assert get_worker(storage, worker.worker_id).last_seen == T0


def test_the_same_receipt_twice_is_stored_once(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    worker = register(storage)
    receipt = receipt_of(worker, samples=64, compute_seconds=8.0)
    first, created = storage.ledger.add_receipt(receipt)
    assert created and first.received_at == T0

    clock.advance(30)
    again, created = storage.ledger.add_receipt(receipt)
    assert not created
    assert again == first  # the stored receipt, received at its first delivery
    # A resend that the ledger classified differently still returns (and keeps) the stored receipt.
    resent, created = storage.ledger.add_receipt(replace(receipt, status="verified", status_reason="later evidence"))
    assert not created and resent == first

    assert get_receipt(storage, receipt.receipt_id) == first
    assert storage.ledger.list_receipts("demo") == [first]
    assert storage.ledger.samples_by_shard("demo") == {0: 64}
    [row] = storage.ledger.leaderboard("demo", include_unverified=True)
    assert (row.samples, row.receipts, row.compute_seconds) == (64, 1, 8.0)


def test_the_same_id_with_other_content_is_a_conflict(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    worker = register(storage)
    receipt = receipt_of(worker, samples=64)
    stored, _ = storage.ledger.add_receipt(receipt)
    clock.advance(10)

    forged = receipt_of(worker, receipt_id=receipt.receipt_id, samples=6400)  # new payload and signature
    with pytest.raises(ReceiptConflictError, match=receipt.receipt_id):
        storage.ledger.add_receipt(forged)
    with pytest.raises(ReceiptConflictError, match=receipt.receipt_id):
        storage.ledger.add_receipt(replace(receipt, signature=receipt.signature + "0"))  # the payload alone matches
    with pytest.raises(ReceiptConflictError, match=receipt.receipt_id):
        storage.ledger.add_receipt(replace(receipt, payload=receipt.payload + " "))  # the signature alone matches

    assert get_receipt(storage, receipt.receipt_id) == stored
    assert storage.ledger.list_receipts("demo") == [stored]
    assert storage.ledger.samples_by_shard("demo") == {0: 64}


def test_overlapping_intervals_of_one_peer_on_one_shard_are_rejected(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    create_run(storage, "other")
    alice, bob = register(storage, peer="alice"), register(storage, peer="bob")

    def at(seconds: float) -> datetime:
        return START + timedelta(seconds=seconds)

    first = add(storage, alice, shard=0, samples=100, started_at=at(0), ended_at=at(60))
    clock.advance(5)
    restarted = register(storage, peer="alice")  # a new registration of the same peer claims the same time
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
        receipt = receipt_of(worker, peer="alice", shard=0, samples=1000, started_at=started, ended_at=ended)
        with pytest.raises(OverlappingReceiptError, match=first.receipt_id):
            storage.ledger.add_receipt(receipt)
        assert get_receipt(storage, receipt.receipt_id) is None
    assert storage.ledger.samples_by_shard("demo") == {0: 100}
    assert get_worker(storage, restarted.worker_id).last_seen == T0 + timedelta(seconds=5)

    add(storage, alice, shard=1, samples=1, started_at=at(0), ended_at=at(60))  # another shard
    add(storage, bob, shard=0, samples=2, started_at=at(0), ended_at=at(60))  # another peer
    add(storage, restarted, shard=0, samples=4, started_at=at(60), ended_at=at(120))  # starts as the first ends
    add(storage, alice, shard=0, samples=8, started_at=at(-60), ended_at=at(0))  # ends as the first starts
    other_alice = register(storage, run="other", peer="alice")
    add(storage, other_alice, shard=0, samples=16, started_at=at(0), ended_at=at(60))  # another run

    assert storage.ledger.samples_by_shard("demo") == {0: 114, 1: 1}
    assert storage.ledger.samples_by_shard("other") == {0: 16}
    assert len(storage.ledger.list_receipts("demo", peer_id="alice", shard=0)) == 3


def test_disputed_receipts_are_not_counted(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    alice, bob, carol = (register(storage, peer=peer) for peer in ("alice", "bob", "carol"))
    t1 = clock.advance(1)
    add(storage, alice, shard=0, samples=10, epoch=1, status="verified")
    add(storage, bob, shard=0, samples=1000, epoch=7, compute_seconds=9.0, status="disputed",
         status_reason="claims epoch 7")
    lying = add(storage, carol, shard=1, samples=500, epoch=5, compute_seconds=4.0)
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
    create_run(storage)
    create_run(storage, "other")
    alice = register(storage, peer="alice")
    storage.runs.register_worker("demo", "bob", "Bobby (old name)", [0], data_slice=0, device="cpu")
    clock.advance(1)
    bob = storage.runs.register_worker("demo", "bob", "Bob", [0, 1], data_slice=1, device="cuda:0")  # newest name wins
    stranger = register(storage, run="other", peer="alice")
    carol, dave = "carol" + "x" * 40, "dave"
    assert storage.ledger.leaderboard("demo") == []

    def at(seconds: float) -> datetime:
        return START + timedelta(seconds=seconds)

    add(storage, alice, samples=1000, compute_seconds=100.0, status="disputed", started_at=at(0), ended_at=at(60))
    add(storage, alice, samples=100, compute_seconds=10.0, status="verified", started_at=at(100), ended_at=at(160))
    add(storage, alice, shard=1, samples=50, compute_seconds=5.0, started_at=at(200), ended_at=at(260))
    add(storage, bob, samples=120, compute_seconds=12.0, status="verified", started_at=at(0), ended_at=at(30))
    add(storage, peer=carol, samples=500, compute_seconds=50.0, started_at=at(0), ended_at=at(90))
    add(storage, peer=dave, samples=70, compute_seconds=7.0, status="disputed", started_at=at(500), ended_at=at(530))
    add(storage, stranger, samples=10**6, status="verified")  # another run

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


def test_a_sample_trained_on_several_shards_counts_once(storage: Storage) -> None:
    """A worker training both shards sends one receipt per shard for the same interval and the same samples:
    the leaderboard and the run's total count those samples once; per shard they count for each shard."""
    create_run(storage)
    worker = register(storage, peer="alice", shards=(0, 1))
    first, second = START, START + timedelta(seconds=60)
    for shard in (0, 1):
        add(storage, worker, shard=shard, samples=96, compute_seconds=30.0, status="verified", started_at=first,
            ended_at=first + timedelta(seconds=60))
        add(storage, worker, shard=shard, samples=96, compute_seconds=30.0, status="verified", started_at=second,
            ended_at=second + timedelta(seconds=60))
    add(storage, worker, shard=0, samples=8, started_at=second + timedelta(seconds=60),
        ended_at=second + timedelta(seconds=70))  # unverified, shard 0 only
    [row] = storage.ledger.leaderboard("demo")
    assert (row.samples, row.verified_samples, row.compute_seconds, row.receipts) == (192, 192, 120.0, 5)
    assert storage.ledger.leaderboard("demo", include_unverified=True)[0].samples == 200
    assert storage.ledger.distinct_samples("demo", verified_only=True) == 192
    assert storage.ledger.distinct_samples("demo") == 200
    assert storage.ledger.samples_by_shard("demo", verified_only=True) == {0: 192, 1: 192}  # sample-shards: 384
    create_run(storage, "empty")
    assert storage.ledger.distinct_samples("empty") == 0
    with pytest.raises(UnknownRunError):
        storage.ledger.distinct_samples("nope")


def test_set_receipt_status_records_the_check(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    worker = register(storage)
    receipt = add(storage, worker, samples=40)
    other = add(storage, worker, samples=2)
    assert (receipt.status, receipt.status_reason, receipt.checked_at) == ("unverified", "", None)

    checked = clock.advance(40)
    storage.ledger.set_receipt_status(receipt.receipt_id, "verified", "matches the DHT")
    verified = replace(receipt, status="verified", status_reason="matches the DHT", checked_at=checked)
    assert get_receipt(storage, receipt.receipt_id) == verified
    assert get_receipt(storage, other.receipt_id) == other
    assert storage.ledger.leaderboard("demo")[0].verified_samples == 40

    clock.advance(1)
    with pytest.raises(ValueError, match="status"):
        storage.ledger.set_receipt_status(receipt.receipt_id, "accepted", "not a receipt status")
    assert get_receipt(storage, receipt.receipt_id) == verified
    with pytest.raises(StorageError, match="no receipt"):
        storage.ledger.set_receipt_status("no-such-receipt", "verified", "")

    rechecked = clock.advance(1)
    storage.ledger.set_receipt_status(receipt.receipt_id, "disputed", "the DHT moved on")
    assert get_receipt(storage, receipt.receipt_id) == replace(
        receipt, status="disputed", status_reason="the DHT moved on", checked_at=rechecked)
    assert storage.ledger.samples_by_shard("demo") == {0: 2}


def test_list_receipts_filters_and_puts_the_newest_interval_first(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    alice, bob = register(storage, peer="alice"), register(storage, peer="bob")
    a0 = add(storage, alice, shard=0)
    since = clock.advance(10)
    b1 = add(storage, bob, shard=1)
    a1 = add(storage, alice, shard=1, status="verified")  # _receipt times each receipt after the one before

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
    create_run(storage)
    zed, amy = register(storage, peer="zed"), register(storage, peer="amy")
    t1 = clock.advance(1)
    add(storage, zed)
    t2 = clock.advance(1)
    add(storage, amy)
    t3 = clock.advance(1)
    add(storage, zed)
    tiny = timedelta(microseconds=1)

    assert storage.ledger.contributors_between("demo", None, t1) == ["zed"]
    assert storage.ledger.contributors_between("demo", None, t1 - tiny) == []
    assert storage.ledger.contributors_between("demo", t1, t2) == ["amy"]
    assert storage.ledger.contributors_between("demo", t1 - tiny, t2) == ["amy", "zed"]  # sorted, distinct
    assert storage.ledger.contributors_between("demo", None, t3) == ["amy", "zed"]
    assert storage.ledger.contributors_between("demo", t2, t3) == ["zed"]
    assert storage.ledger.contributors_between("demo", t3, t3 + timedelta(days=1)) == []
    # The same instant written in another timezone selects the same rows.
    minus_five = timezone(timedelta(hours=-5))
    assert storage.ledger.contributors_between("demo", None, t2.astimezone(minus_five)) == ["amy", "zed"]
    with pytest.raises(ValueError, match="timezone-aware"):
        storage.ledger.contributors_between("demo", None, t3.replace(tzinfo=None))


def test_observations_are_upserted_per_run_shard_peer_and_epoch(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    create_run(storage, "other")
    record = storage.ledger.record_observation
    record("demo", 0, "alice", 3, samples_per_second=5.0, samples_accumulated=100, key_bound=True)
    clock.advance(10)
    record("demo", 0, "alice", 3, samples_per_second=2.5, samples_accumulated=300, key_bound=False)
    t20 = clock.advance(10)
    record("demo", 0, "alice", 3, samples_per_second=4.0, samples_accumulated=200, key_bound=True)
    record("demo", 0, "alice", 4, samples_per_second=1.0, samples_accumulated=10, key_bound=True)
    record("demo", 0, "bob", 3, samples_per_second=7.0, samples_accumulated=70, key_bound=True)
    record("demo", 1, "alice", 3, samples_per_second=9.0, samples_accumulated=90, key_bound=True)
    record("other", 0, "alice", 3, samples_per_second=8.0, samples_accumulated=80, key_bound=True)

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
    create_run(storage)
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
    create_run(storage)
    create_run(storage, "other")
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


def test_peer_context_lists_the_peers_registrations_newest_first(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    create_run(storage, "other")
    first = register(storage, peer="alice")
    clock.advance(5)
    register(storage, peer="bob")
    second = register(storage, peer="alice", shards=(2,))
    clock.advance(5)
    third = register(storage, peer="alice", shards=(1,))
    register(storage, run="other", peer="alice")

    def registrations(run: str, peer: str) -> list[WorkerRecord]:
        return list(storage.ledger.peer_context(run, peer, 0, T0, T0).registrations)

    assert registrations("demo", "alice") == [third, second, first]
    assert [w.peer_id for w in registrations("demo", "bob")] == ["bob"]
    assert registrations("demo", "carol") == []
    assert len(registrations("other", "alice")) == 1


def test_peer_context_reads_the_evidence_about_one_interval(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    alice = register(storage, peer="alice")
    storage.ledger.record_observation("demo", 0, "alice", 2, 4.0, 16, True)  # seen at T0 only
    storage.ledger.record_observation("demo", 0, "bob", 9, 1.0, 1, True)
    storage.ledger.record_observation("demo", 1, "alice", 30, 1.0, 1, True)
    clock.advance(100)
    storage.ledger.record_observation("demo", 0, "alice", 3, 5.0, 32, True)  # seen at T0 + 100s only

    def at(seconds: float) -> datetime:
        return START + timedelta(seconds=seconds)

    add(storage, alice, samples=60, started_at=at(0), ended_at=at(30))  # 2 samples/s
    add(storage, alice, samples=30, started_at=at(30), ended_at=at(60))  # 1 sample/s
    add(storage, alice, samples=0, started_at=at(60), ended_at=at(90))  # no rate
    add(storage, alice, samples=900, started_at=at(90), ended_at=at(120), status="disputed")  # never counts
    add(storage, alice, shard=1, samples=300, started_at=at(0), ended_at=at(30))  # another shard

    context = storage.ledger.peer_context("demo", "alice", 0, T0 + timedelta(seconds=50), T0 + timedelta(seconds=200))
    assert [(o.peer_id, o.epoch) for o in context.observations] == [("alice", 3)]  # seen within the window
    assert context.highest_epoch == 9  # of any peer on the shard
    assert context.recent_rates == (1.0, 2.0)  # the newest interval first
    seen = get_worker(storage, alice.worker_id)  # the receipts touched it
    assert context.registrations == (seen,) and seen.last_seen == T0 + timedelta(seconds=100)
    assert storage.ledger.peer_context("demo", "alice", 0, T0, T0, history=1).recent_rates == (1.0,)
    assert storage.ledger.peer_context("demo", "alice", 2, T0, T0) == PeerContext((seen,), (), None, ())

def test_concurrent_receipts_with_resends_count_each_id_once(
    open_storage, db_url: str, request: pytest.FixtureRequest
) -> None:
    storage = open_storage()  # the real clock: timestamps from many threads
    create_run(storage)
    threads, per_thread = 16, 50
    workers = [register(storage, peer=f"peer-{i}") for i in range(threads)]
    own = [[receipt_of(workers[i], shard=i % 3, samples=call + 1) for call in range(per_thread)]
           for i in range(threads)]
    # Every 10th call, the two threads of a pair send the same receipt at once (a resend racing its first delivery).
    pair_workers = [register(storage, peer=f"pair-{pair}") for pair in range(threads // 2)]
    shared = {(call, pair): receipt_of(pair_workers[pair], shard=pair % 3, samples=1000 * (call + 1) + pair)
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
                assert again == get_receipt(storage, again.receipt_id)
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
    create_run(storage)
    worker = register(storage)
    for round_index in range(15):
        started = T0 - timedelta(days=1) + timedelta(minutes=round_index)
        pair = [receipt_of(worker, samples=10 + side, started_at=started + timedelta(seconds=side),
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
    create_run(storage)
    barrier = threading.Barrier(8)

    def record(rate: float) -> None:
        barrier.wait()
        storage.ledger.record_observation("demo", 0, "peer-a", 3, rate, 16, True)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(record, [float(rate) for rate in range(8)]))
    [observation] = storage.ledger.observations("demo", 0)
    assert observation.samples_per_second == 7.0
