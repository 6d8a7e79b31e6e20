"""A real ``swarm coordinator`` process on loopback, for tests that attack it from the outside (real gRPC clients,
another process) and then check it is still up and its data unchanged.

Usage::

    def test_something(coordinator_process):
        address = coordinator_process.address
        ...
        assert coordinator_process.alive()
        assert coordinator_process.db_snapshot() == before
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from swarm.local_swarm import free_port

START_TIMEOUT_S = 120.0


def db_snapshot(data_dir: Path) -> dict[str, list[tuple]]:
    """Every row of every table of the SQLite database of the coordinator of ``data_dir``, read by a separate
    connection (compare two to show that an attack changed nothing)."""
    connection = sqlite3.connect(f"file:{Path(data_dir) / 'coordinator.db'}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")]
        return {table: sorted(connection.execute(f'select * from "{table}"').fetchall(), key=repr)
                for table in sorted(tables)}
    finally:
        connection.close()


class CoordinatorProcess:
    def __init__(self, data_dir: Path, *extra_args: str, port: int | None = None, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.args = [sys.executable, "-m", "nomoat_cli", "coordinator", "--data-dir", str(self.data_dir),
                     "--port", str(self.port), "--no-publish", *extra_args]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.address = ""
        self.peer_id = ""
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> "CoordinatorProcess":
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=self.env)
        ready = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line)
                if line.startswith("coordinator: "):
                    self.address = line.split(": ", 1)[1].strip()
                elif line.startswith("coordinator key"):
                    self.peer_id = line.rsplit(": ", 1)[1].strip()
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(START_TIMEOUT_S) or not self.peer_id:
            self.stop()
            raise AssertionError(f"coordinator did not start:\n{self.log()}")
        return self

    def log(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def db_snapshot(self) -> dict[str, list[tuple]]:
        """Every row of every table of the coordinator's SQLite database, read by a separate connection."""
        return db_snapshot(self.data_dir)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture()
def coordinator_process(tmp_path):
    """A started coordinator process on its own data dir; stopped (or found dead) at the end of the test."""
    process = CoordinatorProcess(tmp_path / "coordinator").start()
    try:
        yield process
    finally:
        process.stop()


def wait_until(condition, timeout: float, message: str = "condition not met", every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(every)
