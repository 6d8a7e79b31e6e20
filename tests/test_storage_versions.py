"""Contract tests of the adapter versions store (``Storage.versions``: versions and rejected snapshots), on SQLite
and on PostgreSQL when one answers at 127.0.0.1:5432 (database ``test``; see conftest.py)."""

from __future__ import annotations

import math

import pytest

from coordinator.storage import Storage, UnknownRunError, VersionExistsError
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
