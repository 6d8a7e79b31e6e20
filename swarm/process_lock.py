"""Exclusive advisory locks held for the life of a process: one coordinator per data dir, one swarm peer per
identity key.

Two coordinators on one data dir would serve the same database and adapter store (split brain); two peers under
one identity key have the same peer ID, which libp2p cannot tell apart. The lock is an ``flock`` on a lock
file, released by the kernel however the process ends, SIGKILL included, so a crashed holder never blocks the
next start. The file names the holder (pid, host, and what it serves), which the refusal quotes.

Usage::

    with data_dir_lock(data_dir) as lock:     # ProcessLocked: "... is in use by another coordinator (pid 4242 ...)"
        lock.describe_holder("127.0.0.1:50051")
    lock = identity_lock(Path("~/.config/nomoat/identity.key")).acquire()  # held while a DHT uses the key
    require_identity_free(Path("~/.config/nomoat/identity.key"))   # ProcessLocked if a peer holds it now
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

DATA_DIR_LOCK_FILE = "coordinator.lock"
# a peer restarted right after a stop waits this long for the old one's processes to end and free its identity
IDENTITY_RELEASE_WAIT_S = 8.0


class ProcessLocked(RuntimeError):
    """Another live process holds the lock."""


class ProcessLock:
    """An exclusive lock on ``path`` guarding ``what`` (for messages), held by a ``holder_kind`` process."""

    def __init__(self, path: Path, what: str, holder_kind: str, advice: str = ""):
        self.path, self.what, self.holder_kind, self.advice = Path(path), what, holder_kind, advice
        self._fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> "ProcessLock":
        """Take the lock, waiting up to ``wait_s`` for a holder that is going away (a restart right after a
        stop); ``ProcessLocked`` naming the holder when it is still held."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                holder = _read_holder(fd)
                os.close(fd)
                advice = f"; {self.advice}" if self.advice else ""
                raise ProcessLocked(f"{self.what} is in use by another {self.holder_kind} ({holder}){advice}") from None
        self._fd = fd
        self.describe_holder("")
        return self

    def describe_holder(self, address: str) -> None:
        """Write who holds the lock (quoted to the next process that tries)."""
        if self._fd is None:
            return
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "address": address}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, holder, 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # also for children that inherited the descriptor by fork
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ProcessLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def data_dir_lock(data_dir: Path) -> ProcessLock:
    """The lock that keeps a second coordinator off a data dir."""
    return ProcessLock(Path(data_dir) / DATA_DIR_LOCK_FILE, f"data dir {data_dir}", "coordinator",
                       "stop it first, or give this one its own --data-dir")


def identity_lock(identity_path: Path) -> ProcessLock:
    """The lock that keeps a second swarm peer on this machine off an identity key (``<key>.lock`` beside it)."""
    identity_path = Path(identity_path)
    return ProcessLock(identity_path.with_name(identity_path.name + ".lock"), f"identity {identity_path}",
                       "swarm peer", "stop it first, or give this one its own identity with --identity PATH")


def require_identity_free(identity_path: Path, wait_s: float = IDENTITY_RELEASE_WAIT_S) -> None:
    """ProcessLocked (naming the holder and ``--identity``) if a swarm peer on this machine holds the identity
    key, after waiting ``wait_s`` for one on its way out. ``swarm donate`` asks before it joins a run and loads
    a model, so a second donor under the same key fails at once, registering nothing; the lock itself is taken
    when its DHT starts (``swarm.dht.start_dht``)."""
    lock = identity_lock(Path(identity_path).expanduser())
    if lock.path.parent.is_dir():  # no folder yet: no key, so no peer holds it
        lock.acquire(wait_s).release()


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        where = f" serving {holder['address']}" if holder.get("address") else ""
        return f"pid {holder['pid']} on {holder['host']}{where}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
