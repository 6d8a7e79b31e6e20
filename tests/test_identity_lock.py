"""One swarm peer per identity key on a machine: a second DHT under the same key is refused at once, naming the
holder, instead of colliding in libp2p (or hanging in hivemind's online check); the key is free again once the
first peer shuts down or its process dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from swarm.dht import IDENTITY_RELEASE_WAIT_S, start_dht
from swarm.identity import load_or_create_identity
from swarm.process_lock import ProcessLocked

HOLD_IDENTITY = ("import sys; from swarm.reaper import start_reaper; from swarm.dht import start_dht; "
                 "start_reaper(); dht = start_dht(identity_path=sys.argv[1]); print('serving', flush=True); "
                 "sys.stdin.read()")


def test_a_second_peer_under_one_identity_is_refused_until_the_first_shuts_down(tmp_path):
    identity = load_or_create_identity(tmp_path / "identity.key")
    first = start_dht(identity_path=str(identity.path))
    try:
        started = time.monotonic()
        with pytest.raises(ProcessLocked, match=rf"identity .*identity.key is in use by another swarm peer "
                                                rf"\(pid {os.getpid()} on .*--identity PATH"):
            start_dht(identity_path=str(identity.path))
        assert time.monotonic() - started < IDENTITY_RELEASE_WAIT_S + 3  # it waited for a release, then gave up
    finally:
        first.shutdown()
    again = start_dht(identity_path=str(identity.path))
    try:
        assert str(again.peer_id) == identity.peer_id
    finally:
        again.shutdown()


def test_the_identity_is_free_once_the_killed_holders_processes_are_reaped(tmp_path):
    identity = load_or_create_identity(tmp_path / "identity.key")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_IDENTITY, str(identity.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "serving"
        with pytest.raises(ProcessLocked, match=rf"pid {holder.pid} on "):
            start_dht(identity_path=str(identity.path))
    finally:
        holder.kill()
        holder.wait()
    # its DHT process (which shares the lock) outlives it until the reaper the entry points start ends it; a
    # restart right away waits for that instead of failing
    dht = start_dht(identity_path=str(identity.path))
    dht.shutdown()


def test_a_second_donor_under_the_default_identity_fails_in_one_line_before_joining(tmp_path):
    """It ended in a 60-line traceback after joining the run and loading the model; now it is refused first."""
    from typer.testing import CliRunner

    from coordinator.server import Coordinator, CoordinatorConfig
    from nomoat_cli.app import app
    from swarm.paths import UserDirs

    key = UserDirs.from_environment().identity_key  # the default identity (XDG_CONFIG_HOME: this test's folder)
    identity = load_or_create_identity(key)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_IDENTITY, str(identity.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    config = CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False)
    try:
        assert holder.stdout.readline().strip() == "serving"
        with Coordinator(config) as coordinator:
            launched = CliRunner().invoke(app, ["launch", "-c", coordinator.address, "--name", "twice",
                                                "--operator-token-file", str(coordinator.operator_token_file)])
            assert launched.exit_code == 0, launched.output
            second = subprocess.run([sys.executable, "-m", "nomoat_cli", "donate", "-c", coordinator.address,
                                     "--run", "twice", "--max-steps", "1", "--no-progress"],
                                    capture_output=True, text=True, timeout=120)
            assert coordinator.storage.runs.live_workers("twice", 3600) == []  # it never joined
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stdout + second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert lines[0].startswith(f"error: identity {key} is in use by another swarm peer (pid {holder.pid} on ")
    assert lines[0].endswith("give this one its own identity with --identity PATH")
