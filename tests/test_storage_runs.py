"""Contract tests of the runs and workers store (``Storage.runs``), on SQLite and on PostgreSQL when one answers
at 127.0.0.1:5432 (database ``test``; see conftest.py)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from coordinator.storage import (
    RunExistsError,
    RunSettings,
    Storage,
    StorageError,
    UnknownRunError,
    UnknownTokenError,
    UnknownWorkerError,
)
from tests.storage_contract import (  # noqa: F401 (fixtures)
    T0,
    FakeClock,
    add,
    clock,
    create_run,
    get_worker,
    open_storage,
    register,
    storage,
)


def test_create_get_and_list_runs(storage: Storage, clock: FakeClock) -> None:
    assert storage.runs.list_runs() == []
    first = create_run(storage, "first")
    clock.advance(1)
    second = create_run(storage, "second")

    assert first.created_at == T0 and first.created_at.tzinfo == timezone.utc
    assert storage.runs.get_run("first") == first
    assert storage.runs.get_run("second").spec_hash == "hash-second"
    assert storage.runs.list_runs() == [first, second]


def test_non_utc_clock_is_stored_as_utc(open_storage) -> None:
    plus_two = timezone(timedelta(hours=2))
    storage = open_storage(clock=lambda: datetime(2025, 1, 1, 14, 0, tzinfo=plus_two))
    run = create_run(storage)
    assert storage.runs.get_run("demo").created_at == run.created_at == T0
    assert storage.runs.get_run("demo").created_at.utcoffset() == timedelta(0)


def test_duplicate_run_is_rejected_and_original_kept(storage: Storage) -> None:
    original = create_run(storage, spec_json='{"lr": 0.001}')
    with pytest.raises(RunExistsError, match="run 'demo' already exists"):
        create_run(storage, spec_json='{"lr": 0.5}')
    assert storage.runs.get_run("demo") == original
    assert storage.runs.list_runs() == [original]


def test_unknown_run_is_reported(storage: Storage) -> None:
    with pytest.raises(UnknownRunError, match="no run named 'nope'"):
        storage.runs.get_run("nope")
    with pytest.raises(UnknownRunError):
        register(storage, run="nope")
    with pytest.raises(UnknownRunError):
        storage.runs.live_workers("nope", 10)


def test_worker_registration_and_liveness(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    alice = register(storage, peer="alice", shards=[2, 5])
    bob = register(storage, peer="bob")
    assert len(alice.worker_id) == 32 and alice.worker_id != bob.worker_id
    assert alice.shards == (2, 5) and alice.data_slice == 3 and alice.device == "cuda:0"
    assert alice.joined_at == alice.last_seen == T0 and not alice.left
    assert get_worker(storage, alice.worker_id) == alice

    clock.advance(10)
    add(storage, alice)  # a receipt is what shows that a worker is still there
    assert get_worker(storage, alice.worker_id).last_seen == T0 + timedelta(seconds=10)
    assert get_worker(storage, alice.worker_id).joined_at == T0
    assert [w.peer_id for w in storage.runs.live_workers("demo", seen_within_s=5)] == ["alice"]
    # seen_within_s is inclusive
    assert sorted(w.peer_id for w in storage.runs.live_workers("demo", seen_within_s=10)) == ["alice", "bob"]
    assert [w.peer_id for w in storage.runs.live_workers("demo", seen_within_s=0)] == ["alice"]

    storage.runs.mark_worker_left(alice.worker_id)
    assert get_worker(storage, alice.worker_id).left
    assert storage.runs.live_workers("demo", seen_within_s=60) == [get_worker(storage, bob.worker_id)]


def test_unknown_worker_is_reported(storage: Storage) -> None:
    create_run(storage)
    with pytest.raises(UnknownWorkerError):
        storage.runs.mark_worker_left("f" * 32)



def test_a_run_is_created_with_its_settings_open_public_and_active_by_default(storage: Storage) -> None:
    create_run(storage, "plain")
    storage.runs.create_run("guarded", "{}", "hash-guarded", "fingerprint", "digest",
                            RunSettings(join_policy="token", private=True))
    assert storage.runs.settings("plain") == RunSettings("open", False, "active")
    assert storage.runs.settings("guarded") == RunSettings("token", True, "active")
    assert storage.runs.all_settings() == {"plain": RunSettings(), "guarded": RunSettings("token", True)}
    with pytest.raises(UnknownRunError):
        storage.runs.settings("nope")
    with pytest.raises(ValueError, match="join policy"):
        RunSettings(join_policy="anyone")


def test_run_states_and_the_default_run(storage: Storage) -> None:
    create_run(storage, "first")
    create_run(storage, "second")
    assert storage.runs.default_run() is None
    storage.runs.set_default("first")
    assert storage.runs.default_run() == "first"
    storage.runs.set_default("second")  # one default at a time
    assert storage.runs.default_run() == "second"
    assert storage.runs.set_state("second", "stopped").state == "stopped"
    assert storage.runs.default_run() is None  # a stopped run is no default
    with pytest.raises(ValueError, match="only an active run"):
        storage.runs.set_default("second")
    with pytest.raises(ValueError, match="run state"):
        storage.runs.set_state("first", "paused")
    assert storage.runs.settings("second").state == "stopped" and storage.runs.settings("first").state == "active"
    storage.runs.set_default(None)
    assert storage.runs.default_run() is None
    with pytest.raises(UnknownRunError):
        storage.runs.set_default("nope")


def test_get_worker(storage: Storage) -> None:
    create_run(storage)
    alice = register(storage, peer="alice")
    assert storage.runs.get_worker(alice.worker_id) == alice
    with pytest.raises(UnknownWorkerError):
        storage.runs.get_worker("f" * 32)


def test_join_tokens_are_kept_by_hash_listed_and_revoked(storage: Storage, clock: FakeClock) -> None:
    create_run(storage, "first")
    create_run(storage, "second")
    digest = hashlib.sha256(b"secret").hexdigest()
    token = storage.tokens.add("first", digest, label="alice")
    other = storage.tokens.add("second", hashlib.sha256(b"other").hexdigest())
    assert (token.run_name, token.label, token.created_at, token.revoked_at) == ("first", "alice", T0, None)
    assert storage.tokens.find(digest) == token
    assert storage.tokens.find(hashlib.sha256(b"guess").hexdigest()) is None
    assert storage.tokens.list_tokens("first") == [token] and storage.tokens.list_tokens("second") == [other]
    clock.advance(5)
    revoked = storage.tokens.revoke(token.id)
    assert revoked.revoked_at == T0 + timedelta(seconds=5) and storage.tokens.find(digest) == revoked
    clock.advance(5)
    assert storage.tokens.revoke(token.id).revoked_at == revoked.revoked_at  # the first revocation is kept
    with pytest.raises(UnknownTokenError):
        storage.tokens.revoke(token.id + 100)
    with pytest.raises(UnknownRunError):
        storage.tokens.add("nope", hashlib.sha256(b"x").hexdigest())
    with pytest.raises(StorageError):  # a hash is unique
        storage.tokens.add("second", digest)
    with pytest.raises(ValueError):
        storage.tokens.add("first", "not-a-digest")
