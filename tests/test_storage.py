"""Contract tests of coordinator.storage.Storage, run against every backend: SQLite always, PostgreSQL when a
server answers at 127.0.0.1:5432 (database ``test``) and psycopg is installed.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from coordinator.schema import Base
from coordinator.storage import (
    RunExistsError,
    Storage,
    UnknownRunError,
    UnknownWorkerError,
    VersionExistsError,
)

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def _postgres_unavailable_reason() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    try:
        psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", connect_timeout=2).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at {POSTGRES_URL}: {' '.join(str(exc).split())}"
    return None


_PG_SKIP = _postgres_unavailable_reason()


class FakeClock:
    """A settable clock, so that timestamps in the tests are exact."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


_POSTGRES_PARAM = pytest.param("postgresql", marks=pytest.mark.skipif(_PG_SKIP is not None, reason=str(_PG_SKIP)))


@pytest.fixture(params=["sqlite", _POSTGRES_PARAM])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'coordinator.db'}"
        return
    # A fresh schema per test, first on the search path, keeps tests (and their alembic_version) apart.
    schema = f"test_storage_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


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
    return storage.create_run(name, spec_json, f"hash-{name}", "fingerprint", "digest")


def _register(storage: Storage, run: str = "demo", peer: str = "peer-a", shards=(0, 1)):
    return storage.register_worker(run, peer, f"name of {peer}", shards, data_slice=3, device="cuda:0")


def _contribute(storage: Storage, worker_id: str, run: str = "demo", **overrides) -> None:
    values = dict(shard=0, samples=10, steps=2, epoch=0, loss=1.5, compute_seconds=3.0) | overrides
    storage.add_contribution(worker_id, run, **values)


def test_create_get_and_list_runs(storage: Storage, clock: FakeClock) -> None:
    assert storage.list_runs() == []
    assert storage.newest_run() is None
    first = _create_run(storage, "first")
    clock.advance(1)
    second = _create_run(storage, "second")

    assert first.created_at == T0 and first.created_at.tzinfo == timezone.utc
    assert storage.get_run("first") == first
    assert storage.get_run("second").spec_hash == "hash-second"
    assert storage.list_runs() == [first, second]
    assert storage.newest_run() == second


def test_non_utc_clock_is_stored_as_utc(open_storage) -> None:
    plus_two = timezone(timedelta(hours=2))
    storage = open_storage(clock=lambda: datetime(2025, 1, 1, 14, 0, tzinfo=plus_two))
    run = _create_run(storage)
    assert storage.get_run("demo").created_at == run.created_at == T0
    assert storage.get_run("demo").created_at.utcoffset() == timedelta(0)


def test_duplicate_run_is_rejected_and_original_kept(storage: Storage) -> None:
    original = _create_run(storage, spec_json='{"lr": 0.001}')
    with pytest.raises(RunExistsError, match="run 'demo' already exists"):
        _create_run(storage, spec_json='{"lr": 0.5}')
    assert storage.get_run("demo") == original
    assert storage.list_runs() == [original]


def test_unknown_run_is_reported(storage: Storage) -> None:
    with pytest.raises(UnknownRunError, match="no run named 'nope'"):
        storage.get_run("nope")
    with pytest.raises(UnknownRunError):
        _register(storage, run="nope")
    for query in (storage.samples_by_shard, storage.list_versions, storage.next_version_number, storage.get_version):
        with pytest.raises(UnknownRunError):
            query("nope")
    with pytest.raises(UnknownRunError):
        storage.live_workers("nope", 10)
    with pytest.raises(UnknownRunError):
        storage.add_version("nope", 1, "0" * 64, "/v1", 0, 0, 1.0, 2.0, [])


def test_worker_registration_and_liveness(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    alice = _register(storage, peer="alice", shards=[2, 5])
    bob = _register(storage, peer="bob")
    assert len(alice.worker_id) == 32 and alice.worker_id != bob.worker_id
    assert alice.shards == (2, 5) and alice.data_slice == 3 and alice.device == "cuda:0"
    assert alice.joined_at == alice.last_seen == T0 and not alice.left
    assert storage.get_worker(alice.worker_id) == alice

    clock.advance(10)
    storage.touch_worker(alice.worker_id)
    assert storage.get_worker(alice.worker_id).last_seen == T0 + timedelta(seconds=10)
    assert storage.get_worker(alice.worker_id).joined_at == T0
    assert [w.peer_id for w in storage.live_workers("demo", seen_within_s=5)] == ["alice"]
    assert sorted(w.peer_id for w in storage.live_workers("demo", seen_within_s=10)) == ["alice", "bob"]  # inclusive
    assert [w.peer_id for w in storage.live_workers("demo", seen_within_s=0)] == ["alice"]

    storage.mark_worker_left(alice.worker_id)
    assert storage.get_worker(alice.worker_id).left
    assert storage.live_workers("demo", seen_within_s=60) == [storage.get_worker(bob.worker_id)]


def test_unknown_worker_is_reported(storage: Storage) -> None:
    _create_run(storage)
    for call in (storage.get_worker, storage.touch_worker, storage.mark_worker_left):
        with pytest.raises(UnknownWorkerError):
            call("f" * 32)
    with pytest.raises(UnknownWorkerError):
        _contribute(storage, "f" * 32)


def test_contributions_are_summed_per_shard_and_touch_the_worker(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    _create_run(storage, "other")
    alice, bob = _register(storage, peer="alice"), _register(storage, peer="bob")
    stranger = _register(storage, run="other", peer="carol")
    assert storage.samples_by_shard("demo") == {}

    clock.advance(7)
    _contribute(storage, alice.worker_id, shard=0, samples=10)
    _contribute(storage, bob.worker_id, shard=0, samples=5)
    _contribute(storage, alice.worker_id, shard=3, samples=2**33)  # beyond 32-bit integers
    _contribute(storage, stranger.worker_id, run="other", shard=0, samples=1000)

    assert storage.samples_by_shard("demo") == {0: 15, 3: 2**33}
    assert storage.samples_by_shard("other") == {0: 1000}
    assert storage.get_worker(alice.worker_id).last_seen == T0 + timedelta(seconds=7)
    with pytest.raises(UnknownWorkerError, match="not registered in run 'demo'"):
        _contribute(storage, stranger.worker_id, run="demo")


@pytest.mark.parametrize(
    "bad",
    [
        {"samples": -1},
        {"steps": -1},
        {"compute_seconds": -0.5},
        {"compute_seconds": math.inf},
        {"loss": math.nan},
        {"loss": math.inf},
        {"loss": -math.inf},
    ],
)
def test_invalid_contributions_are_rejected_and_nothing_stored(storage: Storage, clock: FakeClock, bad) -> None:
    _create_run(storage)
    worker = _register(storage)
    clock.advance(5)
    with pytest.raises(ValueError, match=next(iter(bad))):
        _contribute(storage, worker.worker_id, **bad)
    assert storage.samples_by_shard("demo") == {}
    assert storage.get_worker(worker.worker_id).last_seen == T0
    assert storage.contributors_between("demo", None, clock.now) == []


def test_contributors_between_is_start_exclusive_end_inclusive(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    zed, amy = _register(storage, peer="zed"), _register(storage, peer="amy")
    t1 = clock.advance(1)
    _contribute(storage, zed.worker_id)
    t2 = clock.advance(1)
    _contribute(storage, amy.worker_id)
    t3 = clock.advance(1)
    _contribute(storage, zed.worker_id)
    tiny = timedelta(microseconds=1)

    assert storage.contributors_between("demo", None, t1) == ["zed"]
    assert storage.contributors_between("demo", None, t1 - tiny) == []
    assert storage.contributors_between("demo", t1, t2) == ["amy"]
    assert storage.contributors_between("demo", t1 - tiny, t2) == ["amy", "zed"]  # sorted, distinct
    assert storage.contributors_between("demo", None, t3) == ["amy", "zed"]
    assert storage.contributors_between("demo", t2, t3) == ["zed"]
    assert storage.contributors_between("demo", t3, t3 + timedelta(days=1)) == []
    # The same instant written in another timezone selects the same rows.
    assert storage.contributors_between("demo", None, t2.astimezone(timezone(timedelta(hours=-5)))) == ["amy", "zed"]
    with pytest.raises(ValueError, match="timezone-aware"):
        storage.contributors_between("demo", None, t3.replace(tzinfo=None))


def test_versions_are_numbered_per_run_and_duplicates_rejected(storage: Storage, clock: FakeClock) -> None:
    _create_run(storage)
    _create_run(storage, "other")
    assert storage.next_version_number("demo") == 1
    assert storage.get_version("demo") is None and storage.list_versions("demo") == []

    v1 = storage.add_version("demo", 1, "a" * 64, "/adapters/v1", 0, 100, 2.0, 2.5, ["peer-b", "peer-a"])
    clock.advance(1)
    v2 = storage.add_version("demo", 2, "b" * 64, "/adapters/v2", 1, 250, 1.8, 2.5, ("peer-a",))
    assert v1.contributors == ("peer-b", "peer-a") and v1.created_at == T0
    assert storage.next_version_number("demo") == 3
    assert storage.list_versions("demo") == [v1, v2]
    assert storage.get_version("demo") == v2
    assert storage.get_version("demo", 1) == v1
    assert storage.get_version("demo", 7) is None

    with pytest.raises(VersionExistsError, match="already has version 1"):
        storage.add_version("demo", 1, "c" * 64, "/adapters/other", 5, 1, 0.1, 0.2, [])
    assert storage.get_version("demo", 1) == v1
    assert storage.next_version_number("other") == 1
    storage.add_version("other", 1, "d" * 64, "/other/v1", 0, 1, 1.0, 1.0, [])
    with pytest.raises(ValueError, match="eval_loss"):
        storage.add_version("demo", 3, "e" * 64, "/adapters/v3", 0, 1, math.nan, 1.0, [])
    assert storage.next_version_number("demo") == 3


def test_reopening_upgrades_idempotently_and_sees_data(open_storage, db_url: str) -> None:
    first = open_storage()
    run = _create_run(first)
    worker = _register(first)
    first.close()

    second = open_storage()
    assert second.get_run("demo") == run
    assert second.get_worker(worker.worker_id) == worker
    third = open_storage()  # while the second is still open
    assert third.list_runs() == [run]


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


def test_concurrent_contributions_sum_exactly(open_storage) -> None:
    storage = open_storage()  # the real clock: timestamps from many threads
    _create_run(storage)
    workers = [_register(storage, peer=f"peer-{i}") for i in range(8)]

    def contribute(index: int) -> None:
        for call in range(50):
            _contribute(storage, workers[index].worker_id, shard=index % 3, samples=call + 1)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(contribute, range(8)))

    per_worker = sum(range(1, 51))
    expected = {0: 3 * per_worker, 1: 3 * per_worker, 2: 2 * per_worker}
    assert storage.samples_by_shard("demo") == expected
    assert storage.contributors_between("demo", None, datetime.now(timezone.utc)) == sorted(w.peer_id for w in workers)
