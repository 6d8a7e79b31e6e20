"""One coordinator per data dir: an exclusive advisory lock on ``<data dir>/coordinator.lock``.

Two coordinators on one data dir would serve the same database and adapter store (split brain). The lock is
held for the life of the process and released by the kernel however the process ends, SIGKILL included, so a
crashed coordinator never blocks the next start. The file names the holder (pid, host, address), which the
refusal quotes.

Usage::

    with DataDirLock(data_dir) as lock:       # DataDirLocked: "... is in use by coordinator pid 4242 ..."
        lock.describe_holder("127.0.0.1:50051")
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_FILE = "coordinator.lock"


class DataDirLocked(RuntimeError):
    """Another live coordinator holds the data dir."""


class DataDirLock:
    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "DataDirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirLocked(f"data dir {self.path.parent} is in use by another coordinator ({holder}); stop it "
                                f"first, or give this one its own --data-dir") from None
        self._fd = fd
        self.describe_holder("")
        return self

    def describe_holder(self, address: str) -> None:
        """Write who holds the lock (quoted to a second coordinator)."""
        if self._fd is None:
            return
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "address": address}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, holder, 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DataDirLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        where = f" serving {holder['address']}" if holder.get("address") else ""
        return f"pid {holder['pid']} on {holder['host']}{where}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
