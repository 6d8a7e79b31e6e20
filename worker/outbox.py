"""The worker's outbox: signed receipts are written to a local SQLite file first and deleted only once the
coordinator has acknowledged them, so a coordinator that is down (or restarting) loses nothing and training
never waits for it. A background sender drains the outbox; receipts the coordinator rejects are kept aside
with its reason.

Usage::

    outbox = Outbox(Path("~/.config/nomoat/outbox-Qm....sqlite"), coordinator=endpoint.address)
    outbox.put(signed_receipt)
    sender = OutboxSender(outbox, lambda: CoordinatorClient(endpoint)).start()
    ...
    sender.stop(drain_timeout_s=30)   # try to empty it before exiting; what is left is sent next time
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from swarm.background import BackgroundLoop
from swarm.client import CoordinatorClient, CoordinatorError
from swarm.log import get_logger
from swarm.private_files import private_sqlite_file
from swarm.receipts import Receipt, SignedReceipt
from swarm.stop_signals import ctrl_c_pressed

logger = get_logger(__name__)

BATCH = 64
SAY_DRAIN_EVERY_S = 5.0  # on exit, the countdown of the receipts' delivery is logged this often

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    receipt_id TEXT PRIMARY KEY,
    coordinator TEXT NOT NULL,
    payload BLOB NOT NULL,
    public_key BLOB NOT NULL,
    signature BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    receipt_id TEXT PRIMARY KEY,
    coordinator TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    rejected_at REAL NOT NULL
);
"""


class Outbox:
    """Receipts not yet acknowledged by one coordinator, in a SQLite file (safe to share between threads)."""

    def __init__(self, path: Path, coordinator: str):
        # signed receipts and the coordinator's address are the user's business: 0600, like the config folder's keys
        self.path = private_sqlite_file(Path(path))
        self.coordinator = coordinator
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")  # an acknowledged put survives a power cut
        self._db.executescript(SCHEMA)

    def put(self, signed: SignedReceipt) -> None:
        receipt_id = Receipt.from_payload(signed.payload).receipt_id
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?, ?)",
                             (receipt_id, self.coordinator, signed.payload, signed.public_key, signed.signature,
                              time.time()))

    def pending(self, limit: int = BATCH) -> list[SignedReceipt]:
        """The oldest unacknowledged receipts for this coordinator."""
        with self._lock:
            rows = self._db.execute("SELECT payload, public_key, signature FROM pending WHERE coordinator = ? "
                                    "ORDER BY created_at, receipt_id LIMIT ?", (self.coordinator, limit)).fetchall()
        return [SignedReceipt(bytes(payload), bytes(key), bytes(signature)) for payload, key, signature in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM pending WHERE coordinator = ?",
                                    (self.coordinator,)).fetchone()[0]

    def acknowledge(self, receipt_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM pending WHERE receipt_id = ?", [(rid,) for rid in receipt_ids])

    def reject(self, receipt_id: str, reason: str) -> None:
        """Move a receipt the coordinator refused out of the queue, keeping it and the reason."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO rejected SELECT receipt_id, coordinator, payload, ?, ? "
                                 "FROM pending WHERE receipt_id = ?", (reason, time.time(), receipt_id))
                self._db.execute("DELETE FROM pending WHERE receipt_id = ?", (receipt_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def rejected(self) -> list[tuple[str, str]]:
        with self._lock:
            return self._db.execute("SELECT receipt_id, reason FROM rejected ORDER BY rejected_at").fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class OutboxSender:
    """Sends the outbox to the coordinator in the background: every ``interval_s`` and whenever kicked."""

    def __init__(self, outbox: Outbox, connect: Callable[[], CoordinatorClient], interval_s: float = 5.0):
        self.outbox, self.connect, self.interval_s = outbox, connect, interval_s
        self._client: CoordinatorClient | None = None
        self._loop = BackgroundLoop("outbox-sender", interval_s, self.drain_once)
        self._coordinator_down = False

    def start(self) -> "OutboxSender":
        self._loop.start()
        return self

    def kick(self) -> None:
        self._loop.wake()

    def drain_once(self) -> bool:
        """Send everything pending; False if the coordinator could not be reached (the rest stays queued)."""
        while batch := self.outbox.pending():
            try:
                if self._client is None:
                    self._client = self.connect()
                results = self._client.submit_receipts(batch, timeout=30.0)
            except CoordinatorError as exc:
                if not self._coordinator_down:
                    logger.warning("coordinator unreachable; %d receipts wait in the outbox: %s",
                                   self.outbox.count(), exc)
                self._coordinator_down = True
                return False
            if self._coordinator_down:
                logger.info("coordinator is back; sending %d queued receipts", self.outbox.count())
                self._coordinator_down = False
            acknowledged = []
            for result in results:
                if result.status == "rejected":
                    logger.warning("coordinator rejected receipt %s: %s", result.receipt_id, result.message)
                    self.outbox.reject(result.receipt_id, result.message)
                else:
                    acknowledged.append(result.receipt_id)
            self.outbox.acknowledge(acknowledged)
            if len(results) < len(batch):  # a malformed answer; do not spin on the same batch
                return False
        return True

    def stop(self, drain_timeout_s: float = 30.0) -> int:
        """Stop the background thread, then try to empty the outbox for up to ``drain_timeout_s``;
        returns how many receipts are still queued (they are sent by the next ``swarm donate``)."""
        self._loop.stop(timeout=60)
        deadline = time.monotonic() + drain_timeout_s
        next_say = time.monotonic()
        while self.outbox.count() and time.monotonic() < deadline:
            if time.monotonic() >= next_say:  # the volunteer sees what the exit waits for, and how to skip it
                logger.info("sending %d receipt(s) to the coordinator (up to %.0fs, %s to skip)",
                            self.outbox.count(), deadline - time.monotonic(),
                            "Ctrl-C again" if ctrl_c_pressed() else "Ctrl-C")
                next_say = time.monotonic() + SAY_DRAIN_EVERY_S
            if not self.drain_once():
                time.sleep(1.0)
        if self._client is not None:
            self._client.close()
        left = self.outbox.count()
        if left:
            logger.warning("%d receipts are still in the outbox %s; the next donate sends them", left,
                           self.outbox.path)
        return left
