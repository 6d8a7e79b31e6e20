"""Contract tests of ``PeerBanStore``: reports add up per peer with distinct reporters, bans are kept once and
listed, unbanning forgets the reports. On SQLite and on PostgreSQL when one answers (see conftest.py)."""

from __future__ import annotations

import pytest

from coordinator.storage import ReportTally, Storage, UnknownRunError
from tests.storage_contract import clock, create_run, open_storage, storage  # noqa: F401 (fixtures)


def test_reports_tally_by_peer_and_distinct_reporters(storage: Storage) -> None:
    create_run(storage)
    create_run(storage, "other")
    storage.bans.add_report("demo", "bad", reporter="a", count=3, reason="norm")
    storage.bans.add_report("demo", "bad", reporter="a", count=4, reason="nan")
    assert storage.bans.tally("demo", "bad") == ReportTally(7, 1)
    storage.bans.add_report("demo", "bad", reporter="b", count=1, reason="norm")
    storage.bans.add_report("other", "bad", reporter="c", count=100, reason="norm")
    assert storage.bans.tally("demo", "bad") == ReportTally(8, 2)
    assert storage.bans.tally("demo", "good") == ReportTally(0, 0)
    with pytest.raises(ValueError):
        storage.bans.add_report("demo", "bad", reporter="a", count=0, reason="")
    with pytest.raises(UnknownRunError):
        storage.bans.add_report("missing", "bad", reporter="a", count=1, reason="")


def test_bans_are_kept_once_listed_and_lifted_with_their_reports(storage: Storage) -> None:
    create_run(storage)
    storage.bans.add_report("demo", "bad", reporter="a", count=5, reason="norm")
    first = storage.bans.ban("demo", "bad", "reported", banned_by="reports")
    assert storage.bans.ban("demo", "bad", "again", banned_by="operator") == first
    assert storage.bans.is_banned("demo", "bad") and not storage.bans.is_banned("demo", "good")
    assert storage.bans.list_bans("demo") == [first] == storage.bans.list_bans()
    assert storage.bans.unban("demo", "bad")
    assert not storage.bans.unban("demo", "bad")
    assert not storage.bans.is_banned("demo", "bad") and storage.bans.tally("demo", "bad") == ReportTally(0, 0)
    with pytest.raises(ValueError):
        storage.bans.ban("demo", "x", "", banned_by="someone")
