"""The ledger with a real swarm: two worker processes train while the coordinator is killed (SIGKILL) and
restarted on the same database; their outboxes drain afterwards and the accepted receipts add up exactly to
the samples each worker says it trained. Receipts are cross-checked against hivemind's DHT progress records."""

import re
import subprocess
import sys
import time

import pytest

from coordinator.storage import Storage
from swarm.client import CoordinatorClient
from swarm.local_swarm import LocalSwarm, free_port

RUN = "ledger-swarm"


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "nomoat_cli", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _wait_for(condition, timeout, message):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message()
        time.sleep(0.5)


def test_coordinator_killed_and_restarted_loses_no_receipt(tmp_path):
    port, dht_port = free_port(), free_port()
    coordinator_args = ["--no-publish", "--dht-port", str(dht_port)]
    with LocalSwarm(tmp_path) as local:
        address = local.start_coordinator(coordinator_args, port=port)
        cli("launch", "-c", address, "--operator-token-file", str(local.operator_token_file),
            "--name", RUN, "--base-model", "tiny", "--dataset", "sample", "--shards", "1",
            "--batch-size-per-step", "8", "--target-batch-size", "128", "--lr", "0.01", "--data-slices", "2",
            "--averaging-matchmaking-time", "2", "--averaging-averaging-timeout", "20",
            "--averaging-progress-refresh-s", "0.5")
        for index in range(2):
            local.start_worker(address, RUN, index, ["--max-seconds", "50", "--wait-for-peers", "2",
                                                     "--drain-timeout", "60"])
        logs = lambda: local.log("worker0.log")[-2000:] + local.log("worker1.log")[-2000:]  # noqa: E731

        def verified_receipts() -> int:
            with CoordinatorClient(address) as client:
                return sum(entry.receipts for entry in client.leaderboard(RUN).entries)

        _wait_for(lambda: verified_receipts() >= 2, 150, logs)  # both trained and were cross-checked
        local.kill_coordinator()
        killed_at = time.monotonic()
        _wait_for(lambda: all("coordinator unreachable" in local.log(f"worker{i}.log") for i in range(2)), 60, logs)
        time.sleep(max(0.0, 8 - (time.monotonic() - killed_at)))
        assert all(process.poll() is None for process in local.workers), logs()  # training went on
        local.start_coordinator(coordinator_args, port=port)
        codes = local.wait_workers(timeout=240)
        assert codes == [0, 0], logs()

        trained = {}
        for index in range(2):
            log = local.log(f"worker{index}.log")
            assert "coordinator is back" in log
            peer = re.search(r"joined run \S+ as (\w+)", log).group(1)
            trained[peer] = int(re.search(r"samples per shard: 0=(\d+)", log).group(1))
        with CoordinatorClient(address) as client:
            board = client.leaderboard(RUN, include_unverified=True)
            verified = client.leaderboard(RUN)
    with Storage(f"sqlite:///{tmp_path / 'coordinator' / 'coordinator.db'}") as storage:
        receipts = storage.ledger.list_receipts(RUN)
    assert {entry.peer_id: entry.samples for entry in board.entries} == trained
    assert all(samples > 0 for samples in trained.values())
    assert sum(r.samples for r in receipts) == sum(trained.values())
    assert not any(r.status == "disputed" for r in receipts), [r.status_reason for r in receipts]
    assert {entry.peer_id for entry in verified.entries} == set(trained)  # DHT evidence for both peers
    assert sum(entry.share for entry in board.entries) == pytest.approx(1.0)
