"""A volunteer's terminal: ``swarm donate`` in a real pseudo-terminal against a real coordinator. Ctrl-C (the
terminal's ^C, delivered to the whole foreground process group as from a keyboard) during the start-up, during
the wait for peers and during training ends it within seconds, with exit code 0, no traceback, and the receipts
delivered; SIGTERM stops it as cleanly; a second Ctrl-C ends it at once with 130; a wait for peers says what it
waits for and ends with --max-seconds. ``swarm coordinator`` stops on Ctrl-C as quietly."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coordinator.server import Coordinator, CoordinatorConfig
from swarm.spec import RunSpec

# a session leader with the pty as its controlling terminal, so that ^C on the pty becomes SIGINT for the donor's
# foreground process group, as in a real terminal
CONTROLLING_TTY = ("import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                   "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


class PtyProcess:
    """``swarm ARGS...`` on a pseudo-terminal; everything it writes is collected in ``output``."""

    def __init__(self, args: list[str], env: dict[str, str]):
        import pty

        master, slave = pty.openpty()
        self.master = master
        self.process = subprocess.Popen([sys.executable, "-c", CONTROLLING_TTY, "-m", "nomoat_cli", *args],
                                        stdin=slave, stdout=slave, stderr=slave, env=env,
                                        cwd=Path(__file__).resolve().parent.parent)
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the pty's slave side has ended
                return
            if not data:
                return
            self._chunks.append(data)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            assert self.process.poll() is None, f"ended before {pattern!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {pattern!r} after {timeout}s:\n{self.output}"
            time.sleep(0.1)

    def ctrl_c(self) -> float:
        os.write(self.master, b"\x03")
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            pytest.fail(f"still running {timeout}s later:\n{self.output}")
        self._reader.join(5)
        os.close(self.master)
        return code


def _env(workdir: Path) -> dict[str, str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(workdir / "config"), "XDG_CACHE_HOME": str(workdir / "cache"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "160", "TERM": "xterm"}
    env.pop("NOMOAT_VERBOSE", None)
    return env


class PtyDonor(PtyProcess):
    def __init__(self, coordinator: Coordinator, workdir: Path, name: str, extra: list[str]):
        """``swarm donate`` to a run of its own, ``name`` (peers that left a shared run stay in its DHT records a
        while, and a wait for peers would count them)."""
        # publishing only on hand-overs: a donor stopped after training leaves a version of its final state
        coordinator.runs.launch(RunSpec(name=name, data_slices=1, batch_size_per_step=4, target_batch_size=8,
                                        publish_interval_s=3600))
        self.workdir = workdir
        self.identity = workdir / f"{name}.key"
        super().__init__(["donate", "-c", coordinator.address, "--run", name, "--identity", str(self.identity),
                          "--log-file", str(workdir / f"{name}.log"), *extra], _env(workdir))

    def outbox_pending(self) -> int:
        """Receipts left undelivered in the donor's outbox (beside its identity key)."""
        (outbox,) = self.workdir.glob(f"outbox-*{self._peer_id()}.sqlite")
        with sqlite3.connect(outbox) as db:
            return db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]

    def _peer_id(self) -> str:
        from swarm.identity import load_or_create_identity

        return load_or_create_identity(self.identity).peer_id


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    """One coordinator for the module's donors (each donor has its own identity and run)."""
    config = CoordinatorConfig(data_dir=tmp_path_factory.mktemp("coordinator"), port=0)
    with Coordinator(config) as running:
        yield running


def _clean(output: str) -> None:
    for noise in ("Traceback", "Task was destroyed", "Event loop is closed", "did not shut down"):
        assert noise not in output, output


def test_ctrl_c_during_start_up_leaves_cleanly(coordinator, tmp_path):
    donor = PtyDonor(coordinator, tmp_path, "early", [])
    donor.wait_for(r"joined run")  # the model, the DHT and the optimizers start after this
    pressed = donor.ctrl_c()
    code = donor.wait(60)
    output = donor.output
    assert code == 0, output
    assert time.monotonic() - pressed < 30, output
    assert "stopping cleanly (press Ctrl-C again to abort)" in output and "stopped by interrupted" in output, output
    _clean(output)


def test_ctrl_c_during_the_wait_for_peers_leaves_cleanly(coordinator, tmp_path):
    donor = PtyDonor(coordinator, tmp_path, "waiting", ["--wait-for-peers", "2"])
    donor.wait_for(r"waiting for 1 more peer on shard 0 \(\d+s of 60s\)")
    pressed = donor.ctrl_c()
    code = donor.wait(60)
    output = donor.output
    assert code == 0, output
    assert time.monotonic() - pressed < 15, output
    assert "stopped by interrupted" in output and "training anyway" not in output, output
    _clean(output)


def test_ctrl_c_during_training_delivers_the_receipts_and_leaves(coordinator, tmp_path):
    donor = PtyDonor(coordinator, tmp_path, "training", ["--max-seconds", "600"])
    # the live line, counting down to --max-seconds
    donor.wait_for(r"run training \| shard 0 epoch [1-9]\d* \| [\d.]+ samples/s \| loss [\d.]+ \| 1 peer \| "
                   r"[\d,]+ samples \| ends in 9:\d\d \(max-seconds\)")
    pressed = donor.ctrl_c()
    code = donor.wait(60)
    output = donor.output
    assert code == 0, output
    assert time.monotonic() - pressed < 20, output
    if "sending" in output:  # receipts still queued at the exit (or all sent by the background sender already)
        assert re.search(r"sending \d+ receipt\(s\) to the coordinator \(up to \d+s, Ctrl-C again to skip\)",
                         output), output
    trained = re.search(r"trained (\d+) steps \((\d+) samples\)", output)
    assert trained and int(trained.group(1)) > 0, output
    _clean(output)
    assert donor.outbox_pending() == 0
    # the final state was handed over: a version of it is published
    assert "the coordinator keeps the final state: published version 1" in output, output
    version = coordinator.storage.versions.get_version("training")
    assert version is not None and version.version == 1 and version.epoch >= 1
    rows, _, _ = coordinator.service.leaderboard("training", include_unverified=True)
    (row,) = [row for row in rows if row.peer_id == donor._peer_id()]
    assert row.receipts >= 1 and row.samples > 0


def test_sigterm_stops_as_cleanly(coordinator, tmp_path):
    donor = PtyDonor(coordinator, tmp_path, "terminated", [])
    donor.wait_for(r"samples/s")
    donor.process.terminate()  # the donor alone, as a supervisor (or kill PID) sends it
    sent = time.monotonic()
    code = donor.wait(60)
    output = donor.output
    assert code == 0, output
    assert time.monotonic() - sent < 20, output
    assert "stopping cleanly (SIGTERM received)" in output and "Ctrl-C again" not in output, output
    assert "stopped by interrupted" in output, output
    _clean(output)
    assert donor.outbox_pending() == 0


def test_a_second_ctrl_c_aborts_at_once(coordinator, tmp_path):
    donor = PtyDonor(coordinator, tmp_path, "impatient", [])
    donor.wait_for(r"samples/s")
    donor.ctrl_c()
    donor.wait_for(r"stopping cleanly")
    pressed = donor.ctrl_c()
    code = donor.wait(30)
    assert code == 130, donor.output
    assert time.monotonic() - pressed < 5, donor.output
    assert "aborted" in donor.output and "Traceback" not in donor.output, donor.output


def test_the_wait_for_peers_ends_with_max_seconds(coordinator, tmp_path):
    donor = PtyDonor(coordinator, tmp_path, "alone", ["--wait-for-peers", "2", "--max-seconds", "6"])
    donor.wait_for(r"waiting for 1 more peer on shard 0 \(\d+s of 6s\)")
    started = time.monotonic()
    code = donor.wait(60)
    output = donor.output
    assert code == 0, output
    assert time.monotonic() - started < 25, output
    assert "stopped by max_seconds" in output, output
    _clean(output)


def test_ctrl_c_stops_the_coordinator_quietly(tmp_path):
    command = PtyProcess(["coordinator", "--data-dir", str(tmp_path / "coordinator"), "--port", "0", "--dht-port",
                          "0"], _env(tmp_path))
    command.wait_for(r"initial peers: /ip4/")
    pressed = command.ctrl_c()
    code = command.wait(60)
    assert code == 0, command.output
    assert time.monotonic() - pressed < 15, command.output
    assert "stopping cleanly (press Ctrl-C again to abort)" in command.output
    _clean(command.output)
