"""Peer reports and bans (``PeerBanStore``): which peers a run's workers reported for refused contributions, and
which peers are banned from a run.

A ban is decided by the caller (``coordinator.peer_bans``); the store keeps reports and bans and answers the
counts the rule needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select

from coordinator.schema import PeerBan, PeerReport
from coordinator.storage.database import Database, to_record
from coordinator.storage.runs import require_run

BAN_SOURCES = ("reports", "operator")


@dataclass(frozen=True)
class PeerBanRecord:
    run_name: str
    peer_id: str
    reason: str
    banned_by: str  # reports | operator
    banned_at: datetime


@dataclass(frozen=True)
class ReportTally:
    """What the reports against one peer of a run add up to."""

    total: int  # sum of the reported counts
    reporters: int  # distinct reporters


class PeerBanStore:
    """Reports and bans by run.

    Example::

        storage.bans.add_report("demo", peer_id="QmBad", reporter="QmGood", count=3, reason="norm")
        storage.bans.tally("demo", "QmBad")        # ReportTally(total=3, reporters=1)
        storage.bans.ban("demo", "QmBad", "reported 10 times by 2 peers", banned_by="reports")
        storage.bans.is_banned("demo", "QmBad")    # True
        storage.bans.unban("demo", "QmBad")        # its reports are forgotten too
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def add_report(self, run_name: str, peer_id: str, reporter: str, count: int, reason: str) -> None:
        if count < 1:
            raise ValueError(f"a report counts at least 1 refusal, got {count}")
        with self._db.transaction() as session:
            require_run(session, run_name)
            session.add(PeerReport(run_name=run_name, peer_id=peer_id, reporter=reporter, count=count,
                                   reason=reason[:200], reported_at=self._db.now()))

    def tally(self, run_name: str, peer_id: str, since: datetime | None = None) -> ReportTally:
        """Refusals reported against the peer (since ``since``, when given) and by how many distinct reporters."""
        with self._db.transaction() as session:
            query = (select(func.coalesce(func.sum(PeerReport.count), 0), func.count(func.distinct(PeerReport.reporter)))
                     .where(PeerReport.run_name == run_name, PeerReport.peer_id == peer_id))
            if since is not None:
                query = query.where(PeerReport.reported_at >= since)
            total, reporters = session.execute(query).one()
            return ReportTally(int(total), int(reporters))

    def ban(self, run_name: str, peer_id: str, reason: str, banned_by: str) -> PeerBanRecord:
        """Ban the peer from the run (again: harmless, the first ban is kept)."""
        if banned_by not in BAN_SOURCES:
            raise ValueError(f"banned_by must be one of {', '.join(BAN_SOURCES)}, got {banned_by!r}")
        with self._db.transaction() as session:
            require_run(session, run_name)
            row = session.scalar(select(PeerBan).where(PeerBan.run_name == run_name, PeerBan.peer_id == peer_id))
            if row is None:
                row = PeerBan(run_name=run_name, peer_id=peer_id, reason=reason, banned_by=banned_by,
                              banned_at=self._db.now())
                session.add(row)
                session.flush()
            return to_record(PeerBanRecord, row)

    def unban(self, run_name: str, peer_id: str) -> bool:
        """Lift the ban and forget the reports against the peer; False if it was not banned."""
        with self._db.transaction() as session:
            require_run(session, run_name)
            session.execute(delete(PeerReport).where(PeerReport.run_name == run_name, PeerReport.peer_id == peer_id))
            result = session.execute(delete(PeerBan).where(PeerBan.run_name == run_name, PeerBan.peer_id == peer_id))
            return bool(getattr(result, "rowcount", 0))

    def is_banned(self, run_name: str, peer_id: str) -> bool:
        with self._db.transaction() as session:
            return session.scalar(select(PeerBan.id).where(PeerBan.run_name == run_name,
                                                           PeerBan.peer_id == peer_id)) is not None

    def list_bans(self, run_name: str | None = None) -> list[PeerBanRecord]:
        """The bans of a run (None: of every run), oldest first."""
        with self._db.transaction() as session:
            query = select(PeerBan).order_by(PeerBan.id)
            if run_name is not None:
                query = query.where(PeerBan.run_name == run_name)
            return [to_record(PeerBanRecord, row) for row in session.scalars(query)]
