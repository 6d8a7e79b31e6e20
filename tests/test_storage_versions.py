"""Contract tests of the adapter versions store (``Storage.versions``: versions and rejected snapshots), on SQLite
and on PostgreSQL when one answers at 127.0.0.1:5432 (database ``test``; see conftest.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta

import pytest

from coordinator.storage import (
    RejectedSnapshotRecord,
    Storage,
    UnknownRunError,
    UnknownVersionError,
    VersionExistsError,
)
from tests.storage_contract import T0, FakeClock, clock, create_run, open_storage, storage  # noqa: F401 (fixtures)


def test_unknown_run_is_reported(storage: Storage) -> None:
    for query in (storage.versions.list_versions, storage.versions.next_version_number, storage.versions.get_version,
                  storage.versions.rejected_snapshots):
        with pytest.raises(UnknownRunError):
            query("nope")
    with pytest.raises(UnknownRunError):
        storage.versions.add_version("nope", 1, "0" * 64, "/v1", 0, 0, 1.0, 2.0, [])


def test_versions_are_numbered_per_run_and_duplicates_rejected(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    create_run(storage, "other")
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


def test_releases_are_never_collected_and_collected_versions_never_released(storage: Storage,
                                                                             clock: FakeClock) -> None:
    create_run(storage)
    v1 = storage.versions.add_version("demo", 1, "a" * 64, "/adapters/v1", 0, 10, 2.0, 2.5, [], "{}", "sig")
    storage.versions.add_version("demo", 2, "b" * 64, "/adapters/v2", 1, 20, 1.9, 2.5, [])
    assert (v1.manifest, v1.manifest_signature, v1.release, v1.collected_at) == ("{}", "sig", False, None)

    assert storage.versions.set_release("demo", 1) == replace(v1, release=True)
    with pytest.raises(ValueError, match="is a release"):
        storage.versions.mark_collected("demo", 1)
    assert storage.versions.set_release("demo", 1, release=False) == v1

    collected_at = clock.advance(60)
    collected = storage.versions.mark_collected("demo", 1)
    assert collected == replace(v1, collected_at=collected_at)
    clock.advance(60)
    assert storage.versions.mark_collected("demo", 1) == collected  # collected once, at the first time
    with pytest.raises(ValueError, match="garbage-collected"):
        storage.versions.set_release("demo", 1)
    assert storage.versions.set_release("demo", 1, release=False) == collected  # unmarking is harmless
    assert storage.versions.get_version("demo", 1) == collected
    assert [v.collected_at for v in storage.versions.list_versions("demo")] == [collected_at, None]

    for mark in (storage.versions.set_release, storage.versions.mark_collected):
        with pytest.raises(UnknownVersionError, match="has no version 3"):
            mark("demo", 3)
        with pytest.raises(UnknownRunError):
            mark("nope", 1)


def test_rejected_snapshots_are_listed_newest_first(storage: Storage, clock: FakeClock) -> None:
    create_run(storage)
    create_run(storage, "other")
    assert storage.versions.rejected_snapshots("demo") == []
    first = storage.versions.add_rejected_snapshot("demo", "eval loss regressed", epoch=3, eval_loss=2.75)
    clock.advance(1)
    storage.versions.add_rejected_snapshot("other", "no peers agreed")
    for epoch in range(4, 8):
        storage.versions.add_rejected_snapshot("demo", f"non-finite values at epoch {epoch}", epoch=epoch,
                                               eval_loss=math.inf)
    assert first == RejectedSnapshotRecord("demo", 3, 2.75, "eval loss regressed", T0)

    rejected = storage.versions.rejected_snapshots("demo")
    assert [r.epoch for r in rejected] == [7, 6, 5, 4, 3]
    assert {r.eval_loss for r in rejected[:4]} == {None}  # the reason says it; the column holds numbers only
    assert rejected[0].attempted_at == T0 + timedelta(seconds=1)
    assert [r.epoch for r in storage.versions.rejected_snapshots("demo", limit=2)] == [7, 6]
    assert [r.reason for r in storage.versions.rejected_snapshots("other")] == ["no peers agreed"]
    with pytest.raises(UnknownRunError):
        storage.versions.add_rejected_snapshot("nope", "no run")
