"""One coordinator per data dir and per port: a second one is refused with a message naming the holder, and a
crashed holder never blocks the next start."""

import os
import subprocess
import sys
import time

import pytest

from swarm.process_lock import data_dir_lock, ProcessLocked
from coordinator.server import Coordinator, CoordinatorConfig

HOLD_LOCK = "import sys, time; from swarm.process_lock import data_dir_lock; " \
            "data_dir_lock(sys.argv[1]).acquire().describe_holder('10.9.8.7:50051'); print('held', flush=True); " \
            "time.sleep(60)"


def test_a_second_coordinator_on_the_same_data_dir_is_refused_naming_the_holder(tmp_path):
    config = CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False)
    with Coordinator(config) as first:
        with pytest.raises(ProcessLocked, match=rf"pid {os.getpid()} on .* serving {first.address}"):
            Coordinator(config)
        assert first.service.status() == []  # the first one is untouched
    with Coordinator(config):  # released on stop
        pass


def test_a_second_coordinator_on_the_same_port_is_refused(tmp_path):
    with Coordinator(CoordinatorConfig(data_dir=tmp_path / "one", port=0, publish=False)) as first:
        port = int(first.address.rsplit(":", 1)[1])
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            Coordinator(CoordinatorConfig(data_dir=tmp_path / "two", port=port, publish=False))
        # the refused one left nothing behind: its data dir can be used at once
        with Coordinator(CoordinatorConfig(data_dir=tmp_path / "two", port=0, publish=False)):
            pass


def test_a_killed_holder_releases_the_data_dir(tmp_path):
    (tmp_path / "coord").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "coord")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ProcessLocked, match=rf"pid {holder.pid} on .* serving 10.9.8.7:50051"):
            data_dir_lock(tmp_path / "coord").acquire()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            data_dir_lock(tmp_path / "coord").acquire().release()
            break
        except ProcessLocked:
            assert time.monotonic() < deadline, "the lock of a SIGKILLed holder was not released"
            time.sleep(0.1)
