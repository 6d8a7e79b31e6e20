"""Start a coordinator and workers as local processes of the ``swarm`` CLI: the demo, the end-to-end tests
and ``deploy/local_swarm.sh`` all use these pieces. Every process is started in its own process group and
``LocalSwarm.close`` reaps the whole group (hivemind's p2pd daemons included).

Usage::

    with LocalSwarm(workdir) as swarm:
        address = swarm.start_coordinator()
        with CoordinatorClient(swarm.operator_endpoint(address)) as client:   # operator RPCs need its token
            client.launch_run(spec)
        swarm.start_worker(address, "demo", index=0, extra=["--max-seconds", "30"])
        swarm.wait_workers(timeout=120)

A coordinator that serves TLS (off loopback, or with a certificate) prints its certificate's fingerprint; the swarm
pins it the way a volunteer does: its workers get ``--fingerprint``, and ``swarm.trust`` (CLI options) and
``swarm.endpoint`` (for ``CoordinatorClient`` and ``pull``) carry it to everything else that dials.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from swarm.client import Endpoint
from swarm.credentials import OPERATOR_TOKEN_FILE, read_operator_token

CLI = [sys.executable, "-m", "nomoat_cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalSwarm:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                    # each process logs to its own file: keep hivemind's lines there (tests read them)
                    "NOMOAT_VERBOSE": "1",
                    # several processes share few cores: one torch thread each leaves room for hivemind's averagers
                    "OMP_NUM_THREADS": "1", **(env or {})}
        self.coordinator: subprocess.Popen | None = None
        self.address = ""  # the coordinator's, as it printed it
        self.fingerprint: str | None = None  # its TLS certificate's, as it printed it; None: plaintext
        self.workers: list[subprocess.Popen] = []

    @property
    def trust(self) -> list[str]:
        """CLI options that trust the coordinator as a volunteer would: pin the fingerprint it printed."""
        return ["--fingerprint", self.fingerprint] if self.fingerprint else []

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.address, fingerprint=self.fingerprint)

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = (self.workdir / log_name).open("ab")
        return subprocess.Popen(CLI + args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)

    @property
    def operator_token_file(self) -> Path:
        """The operator token the coordinator made in its data dir on first start."""
        return self.workdir / "coordinator" / OPERATOR_TOKEN_FILE

    def operator_endpoint(self, address: str | None = None) -> Endpoint:
        """The coordinator (at ``address``, default: the one started) with this swarm's operator token, pinning
        its certificate like ``endpoint`` (after ``start_coordinator``)."""
        return replace(self.endpoint, address=address or self.address,
                       operator_token=read_operator_token(self.operator_token_file))

    def start_coordinator(self, extra: Sequence[str] = (), timeout: float = 120.0, port: int | None = None) -> str:
        """Start the coordinator (on ``port``, or a free one) and return its address once it serves.
        Starting it again on the same port and data dir is a restart."""
        port = port or free_port()
        log = self.workdir / "coordinator.log"
        already = len(log.read_text(errors="replace")) if log.exists() else 0
        self.coordinator = self._spawn(["coordinator", "--data-dir", str(self.workdir / "coordinator"),
                                        "--port", str(port), *extra], "coordinator.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")[already:] if log.exists() else ""
            match = re.search(r"^coordinator: (\S+)$", text, re.MULTILINE)
            if match and re.search(r"^coordinator key", text, re.MULTILINE):  # printed after the TLS lines
                pinned = re.search(r"^TLS certificate fingerprint: (sha256:[0-9a-f]{64})$", text, re.MULTILINE)
                self.address, self.fingerprint = match.group(1), pinned.group(1) if pinned else None
                return self.address
            if self.coordinator.poll() is not None:
                raise RuntimeError(f"coordinator exited early; see {log}:\n{text[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"coordinator did not start within {timeout:.0f}s; see {log}")

    def start_worker(self, coordinator: str, run: str, index: int, extra: Sequence[str] = ()) -> subprocess.Popen:
        process = self._spawn(["donate", "--coordinator", coordinator, *self.trust, "--run", run,
                               "--name", f"worker{index}", "--identity", str(self.workdir / f"worker{index}.key"),
                               "--no-progress", *extra],
                              f"worker{index}.log")
        self.workers.append(process)
        return process

    def wait_workers(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for process in self.workers:
            try:
                codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"a worker did not finish within {timeout:.0f}s; logs in {self.workdir}") from None
        return codes

    def kill_coordinator(self) -> None:
        """SIGKILL the coordinator and everything it started (a crash, not a clean stop)."""
        if self.coordinator is not None:
            try:
                os.killpg(self.coordinator.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.coordinator.wait()

    def log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def _stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:  # reap children left in the group (p2pd, averager processes)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def close(self) -> None:
        for process in self.workers:
            self._stop(process)
        if self.coordinator is not None:
            self._stop(self.coordinator)

    def __enter__(self) -> "LocalSwarm":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
