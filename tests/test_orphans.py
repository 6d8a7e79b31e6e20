"""No orphans: when a coordinator or a worker is SIGKILLed, hivemind's DHT, libp2p daemon and averager processes
it started end too (swarm.reaper), instead of running on and holding their ports."""

import subprocess
import sys
import time

import psutil
import pytest

from coordinator.server import Coordinator, CoordinatorConfig
from swarm.spec import RunSpec
from tests.coordinator_process import CoordinatorProcess, wait_until


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_end(processes: list[psutil.Process], timeout: float = 20.0) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    left = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive if p.is_running()]
    for process in alive:
        process.kill()
    assert not left, "still running after their parent was SIGKILLed:\n" + "\n".join(left)


def test_a_sigkilled_coordinator_leaves_no_process_behind(tmp_path):
    coordinator = CoordinatorProcess(tmp_path / "coordinator").start()
    try:
        # the DHT process, its libp2p daemon and the reaper
        wait_until(lambda: len(descendants(coordinator.process.pid)) >= 3, 30, "hivemind's processes never started")
        time.sleep(1)  # the reaper looks twice a second
        children = descendants(coordinator.process.pid)
        assert any("p2pd" in " ".join(child.cmdline()) for child in children)
    finally:
        coordinator.kill()
    assert_all_end(children)


def test_a_sigkilled_worker_leaves_no_process_behind(tmp_path):
    config = CoordinatorConfig(data_dir=tmp_path / "coordinator", port=0, publish=False)
    with Coordinator(config) as coordinator:
        coordinator.runs.launch(RunSpec(name="orphans", data_slices=1, batch_size_per_step=4, target_batch_size=8))
        worker = subprocess.Popen(
            [sys.executable, "-m", "nomoat_cli", "donate", "-c", coordinator.address, "--run", "orphans",
             "--identity", str(tmp_path / "worker.key"), "--no-progress", "--max-seconds", "300"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # training has begun once the shard optimizer's averager runs beside the DHT and its daemon
            wait_until(lambda: worker.poll() is None and len(descendants(worker.pid)) >= 4, 120,
                       "the worker never started its averager")
            time.sleep(2)
            children = descendants(worker.pid)
        finally:
            worker.kill()
            output = worker.communicate()[0]
        assert worker.returncode == -9, output
        assert_all_end(children)
