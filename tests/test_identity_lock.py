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
