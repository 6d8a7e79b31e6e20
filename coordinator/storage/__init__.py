"""The coordinator's storage, one store per aggregate over one database:

- ``storage.runs`` (``RunStore``): runs and the workers registered in them;
- ``storage.ledger`` (``LedgerStore``): contribution receipts, DHT progress observations and what is counted
  from them;
- ``storage.versions`` (``VersionStore``): published adapter versions and rejected snapshots;
- ``storage.tokens`` (``JoinTokenStore``): the hashed join tokens of runs;
- ``storage.bans`` (``PeerBanStore``): peers reported for refused contributions, and peers banned from runs.

Everything outside this package sees frozen records and the exceptions re-exported here (all subclasses of
``StorageError``), never SQLAlchemy objects or errors. The schema lives in ``coordinator.schema`` and is created
and upgraded with Alembic when the storage is opened. Each store's class is its interface: there is one
implementation, and the contract suites (tests/test_storage_*.py) run it on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from coordinator.storage.bans import BAN_SOURCES, PeerBanRecord, PeerBanStore, ReportTally
from coordinator.storage.database import MIGRATIONS_DIR, Database, StorageError, utc_now
from coordinator.storage.ledger import (
    RECEIPT_STATUSES,
    LeaderboardRow,
    LedgerStore,
    ObservationRecord,
    OverlappingReceiptError,
    PeerContext,
    ReceiptConflictError,
    ReceiptRecord,
)
from coordinator.storage.runs import (
    JOIN_POLICIES,
    RUN_STATES,
    RunExistsError,
    RunRecord,
    RunSettings,
    RunStore,
    UnknownRunError,
    UnknownWorkerError,
    WorkerRecord,
)
from coordinator.storage.tokens import JoinTokenRecord, JoinTokenStore, UnknownTokenError
from coordinator.storage.versions import (
    RejectedSnapshotRecord,
    UnknownVersionError,
    VersionExistsError,
    VersionRecord,
    VersionStore,
)

__all__ = [
    "BAN_SOURCES", "PeerBanRecord", "PeerBanStore", "ReportTally",
    "JOIN_POLICIES", "RUN_STATES", "JoinTokenRecord", "JoinTokenStore", "RunSettings", "UnknownTokenError",
    "MIGRATIONS_DIR", "RECEIPT_STATUSES", "Database", "LeaderboardRow", "LedgerStore", "ObservationRecord",
    "OverlappingReceiptError", "PeerContext", "ReceiptConflictError", "ReceiptRecord", "RejectedSnapshotRecord",
    "RunExistsError", "RunRecord", "RunStore", "Storage", "StorageError", "UnknownRunError", "UnknownVersionError",
    "UnknownWorkerError", "VersionExistsError", "VersionRecord", "VersionStore", "WorkerRecord",
]


class Storage:
    """Persistent state of the coordinator, safe to share between threads: the database and its three stores.

    Example::

        with Storage("sqlite:///coordinator.db") as storage:
            storage.runs.create_run("demo", spec_json, spec_hash, fingerprint, digest)
            storage.runs.register_worker("demo", peer_id, "alice", shards=[0, 1], data_slice=0, device="cuda")
            storage.ledger.add_receipt(ReceiptRecord(receipt_id="9f1c...", run_name="demo", shard=0, ...))
            storage.ledger.samples_by_shard("demo")  # {0: 64}
            storage.versions.get_version("demo")  # None until the publisher adds one

    ``clock`` returns the current time (timezone-aware); tests pass a fake one to control timestamps.
    A ``sqlite://`` in-memory database is one shared connection: use a file for concurrent access.
    """

    def __init__(self, url: str, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.database = Database(url, clock=clock)
        self.runs = RunStore(self.database)
        self.ledger = LedgerStore(self.database)
        self.versions = VersionStore(self.database)
        self.tokens = JoinTokenStore(self.database)
        self.bans = PeerBanStore(self.database)

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
