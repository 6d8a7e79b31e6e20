"""Faults of a swarm spread over simulated hosts (tests/netns.py), each with exact bookkeeping afterwards.

1. ``test_worker_killed_mid_averaging_cut_host_and_late_joiner``: three workers on three hosts; one is SIGKILLed
   while inside an averaging round, another host is cut off the network for a while and reconnected, and the
   killed worker comes back late with the same identity, downloads the swarm's state from its peers and trains
   on. The others never stop; the adapter published at the end is valid and pullable; every receipt the killed
   worker signed (acknowledged before the kill or left in its outbox) is counted exactly once, and the ledger
   equals what each worker says it trained.
2. ``test_coordinator_killed_during_publish_and_store_full``: the coordinator is SIGKILLed during training and
   during a publish, restarted on its data dir, then its adapter store runs out of space (a tiny tmpfs) and is
   made read-only: publishing fails cleanly, every earlier version stays served and loads in PEFT, and once the
   store is writable again the next version is published. The ledger matches the work done.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import threading
import time

import pytest
from peft import PeftModel

from coordinator.storage import Storage
from netns import NetSwarm
from netns_fixtures import IPTABLES_SKIP, cli, needs_netns, network, wait_for, worker_totals  # noqa: F401
from swarm.client import CoordinatorClient, CoordinatorError, Endpoint
from swarm.model import build_tiny_model
from swarm.pull import pull
from swarm.receipts import Receipt

pytestmark = [needs_netns, pytest.mark.skipif(IPTABLES_SKIP is not None, reason=str(IPTABLES_SKIP))]

LAUNCH = ["--base-model", "tiny", "--dataset", "sample", "--shards", "1", "--batch-size-per-step", "8", "--lr", "0.01",
          "--averaging-matchmaking-time", "2", "--averaging-averaging-timeout", "10",
          "--averaging-progress-refresh-s", "0.5"]


def _epochs(log: str) -> int:
    """The highest epoch the worker's shard optimizer reached (0 before the first transition)."""
    found = re.findall(r"Transitioning to epoch (\d+)|Catching up with collaboration step (\d+)", log)
    return max((int(a or b) for a, b in found), default=0)


def _outbox_receipts(path) -> dict[str, int]:
    """receipt id -> samples of the receipts still queued in a worker's outbox."""
    with sqlite3.connect(str(path)) as db:
        rows = db.execute("SELECT payload FROM pending").fetchall()
    receipts = [Receipt.from_payload(bytes(payload)) for (payload,) in rows]
    return {receipt.receipt_id: receipt.samples for receipt in receipts}


def _ledger_receipts(db_path, run: str, peer: str) -> dict[str, int]:
    with Storage(f"sqlite:///{db_path}") as storage:
        return {r.receipt_id: r.samples for r in storage.ledger.list_receipts(run, peer_id=peer)}


def _pull_and_load(endpoint: Endpoint, run: str, version: int, out) -> None:
    """Pull a version (verified against what the coordinator recorded) and load it with stock PEFT."""
    pulled = pull(endpoint, run, out, version=version)
    assert pulled.version == version
    model = PeftModel.from_pretrained(build_tiny_model(), str(out))
    assert any("lora_" in name for name, _ in model.named_parameters())


def test_worker_killed_mid_averaging_cut_host_and_late_joiner(network, tmp_path):
    run = "faults"
    coordinator = network.add_host("coord")
    hosts = [network.add_host(f"w{index}", rate_mbit=100) for index in range(3)]
    with NetSwarm(network, tmp_path) as swarm:
        address = swarm.start_coordinator_on(coordinator, ["--no-publish"])
        cli("launch", "-c", address, *swarm.trust, "--operator-token-file", str(swarm.operator_token_file),
            "--name", run, "--target-batch-size", "192", "--data-slices", "3", *LAUNCH)
        endpoint = swarm.endpoint  # pins the certificate whose fingerprint the coordinator printed
        steady = ["--wait-for-peers", "3", "--drain-timeout", "60", "--max-seconds", "50", "--linger", "40"]
        for index in range(3):
            swarm.start_worker_on(hosts[index], address, run, index, steady)
        log = lambda index: swarm.log(f"worker{index}.log")  # noqa: E731
        logs = lambda: "\n=====\n".join(log(i)[-2500:] for i in range(3))  # noqa: E731

        # 1. SIGKILL worker 2 inside an averaging round, once the ledger holds receipts of it (so there is
        #    something delivered before the kill, and maybe something queued, to count afterwards)
        wait_for(lambda: re.search(r"joined run \S+ as (\w+)", log(2)), 150, logs)
        victim = re.search(r"joined run \S+ as (\w+)", log(2)).group(1)

        def credited() -> bool:
            with CoordinatorClient(endpoint) as client:
                board = client.leaderboard(run, include_unverified=True)
            return any(entry.peer_id == victim for entry in board.entries)

        wait_for(credited, 150, logs)
        wait_for(lambda: log(2).count("Beginning optimizer step") > _epochs(log(2)), 60, logs, every=0.05)
        swarm.kill_worker(2)
        killed_log = log(2)
        assert "samples per shard" not in killed_log  # it never got to say goodbye
        epochs_at_kill = [_epochs(log(i)) for i in range(2)]
        time.sleep(1.0)  # a receipt batch in flight when it died is committed (or not) by now
        db_path = tmp_path / "coordinator" / "coordinator.db"
        acknowledged = _ledger_receipts(db_path, run, victim)
        queued = _outbox_receipts(tmp_path / f"outbox-{victim}.sqlite")
        assert acknowledged, "the killed worker had delivered no receipt before it died"

        # 2. the others go on without it
        wait_for(lambda: all(_epochs(log(i)) > epochs_at_kill[i] for i in range(2)), 60, logs)

        # 3. worker 1's host is cut off for 6 s, then reconnected; it keeps running and rejoins
        network.cut(hosts[1])
        cut_at_epoch = _epochs(log(0))
        time.sleep(6)
        assert all(process.poll() is None for process in swarm.workers[:2]), logs()
        network.reconnect(hosts[1])
        reconnected_at = len(log(1))
        wait_for(lambda: _epochs(log(0)) > cut_at_epoch, 60, logs)  # the swarm went on during and after the cut

        # 4. worker 2 comes back late (same identity, same outbox) and catches up from its peers
        swarm.start_worker_on(hosts[2], address, run, 2, ["--wait-for-peers", "1", "--drain-timeout", "60",
                                                          "--max-seconds", "20", "--linger", "30"])
        # all three done training and still serving their state: publish from them now
        wait_for(lambda: all("samples per shard" in log(i) for i in range(3)), 150, logs)
        with CoordinatorClient(swarm.operator_endpoint()) as client:
            published = client.publish_now(run)
        for process in swarm.workers[:2] + swarm.workers[3:]:
            process.terminate()  # end the lingering (SIGTERM: a clean leave)
        codes = [swarm.workers[i].wait(timeout=100) for i in (0, 1, 3)]
        assert codes == [0, 0, 0], logs()
        # the late joiner catches up with the swarm's epoch by downloading the state, then trains with them
        rejoined = log(2)[len(killed_log):]
        assert re.search(r"Downloading parameters from peer|loading state from peers", rejoined), rejoined[-3000:]
        assert "Averaged gradients with" in rejoined, rejoined[-3000:]
        assert all("Averaged gradients with" in log(i) for i in range(2))
        # the reconnected worker rejoined the swarm: it averaged with it again, or caught up from its state
        after_cut = log(1)[reconnected_at:]
        assert re.search(r"Averaged gradients with [23] peers|Downloading parameters from peer", after_cut), after_cut

        # 5. the ledger: exact per worker, and every receipt of the killed session counted once
        totals = dict(worker_totals(log(i)) for i in range(2))
        late_peer, late_samples = worker_totals(rejoined)
        assert late_peer == victim and late_samples > 0
        with CoordinatorClient(endpoint) as client:
            board = {entry.peer_id: entry.samples for entry in client.leaderboard(run, include_unverified=True).entries}
        final = _ledger_receipts(db_path, run, victim)
        killed_session = {**acknowledged, **queued}
        assert set(killed_session) <= set(final)  # nothing signed before the kill was lost
        assert sum(final.values()) == sum(killed_session.values()) + late_samples  # and nothing counted twice
        assert board == {**totals, victim: sum(final.values())}

        # 6. the adapter published after all this is valid
        assert published.published, published.message + logs()
        _pull_and_load(endpoint, run, published.version.version, tmp_path / "adapter")


class _TinyStore:
    """A small tmpfs mounted over the coordinator's adapter store: fill it (ENOSPC) or make it read-only."""

    def __init__(self, path, size="4m"):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "nomoat-test-store", str(path)], check=True)

    def fill(self) -> None:
        with (self.path / "filler").open("wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * (1 << 16))
                    handle.flush()
            except OSError:
                pass

    def unfill(self) -> None:
        (self.path / "filler").unlink()

    def read_only(self, flag: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if flag else 'rw'}", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def _publish(endpoint: Endpoint, run: str):
    with CoordinatorClient(endpoint) as client:
        return client.publish_now(run)


def _served_versions(endpoint: Endpoint, run: str) -> list[int]:
    with CoordinatorClient(endpoint) as client:
        return [version.version for version in client.status(run).runs[0].versions]


def test_coordinator_killed_during_publish_and_store_full(network, tmp_path, request):
    run = "publishfaults"
    coordinator = network.add_host("coord")
    hosts = [network.add_host(f"w{index}", rate_mbit=100) for index in range(2)]
    try:
        store = _TinyStore(tmp_path / "coordinator" / "store")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs as the adapter store: {exc}")
    request.addfinalizer(store.close)
    with NetSwarm(network, tmp_path) as swarm:
        address = swarm.start_coordinator_on(coordinator, ["--no-publish"])
        cli("launch", "-c", address, *swarm.trust, "--operator-token-file", str(swarm.operator_token_file),
            "--name", run, "--target-batch-size", "128", "--data-slices", "2", *LAUNCH)
        endpoint = swarm.endpoint  # pins the certificate whose fingerprint the coordinator printed
        for index in range(2):
            swarm.start_worker_on(hosts[index], address, run, index,
                                  ["--wait-for-peers", "2", "--drain-timeout", "90", "--max-seconds", "45",
                                   "--linger", "90"])
        logs = lambda: "\n=====\n".join(swarm.log(f"worker{i}.log")[-2500:] for i in range(2)) + \
            "\n=====\n" + swarm.log("coordinator.log")[-3000:]  # noqa: E731
        wait_for(lambda: all(_epochs(swarm.log(f"worker{i}.log")) >= 1 for i in range(2)), 150, logs)
        first = _publish(swarm.operator_endpoint(), run)
        assert first.published, first.message + logs()

        # 1. SIGKILL the coordinator in the middle of a publish, while the workers train; restart it
        wait_for(lambda: all(_epochs(swarm.log(f"worker{i}.log")) > first.version.epoch for i in range(2)), 60, logs)
        interrupted: list[BaseException | None] = []
        operator = swarm.operator_endpoint()
        attempt = threading.Thread(target=lambda: interrupted.append(_publish_error(operator, run)), daemon=True)
        attempt.start()
        time.sleep(0.4)  # the publish (state download from 2 peers, merge, eval, store) takes >1 s here
        swarm.kill_coordinator()
        attempt.join(timeout=30)
        assert interrupted and isinstance(interrupted[0], CoordinatorError), "the publish ended before the kill"
        time.sleep(6)  # long enough that the workers notice and queue their receipts
        assert all(process.poll() is None for process in swarm.workers), logs()
        swarm.start_coordinator_on(coordinator, ["--no-publish"], port=int(address.rsplit(":", 1)[1]))
        assert swarm.endpoint == endpoint  # the restarted coordinator kept its certificate: the pin still holds
        served = _served_versions(endpoint, run)
        assert served == list(range(1, len(served) + 1)) and served[0] == 1  # dense, and v1 survived
        assert not list((store.path / run).glob(".partial-*"))  # an interrupted version left nothing behind
        for version in served:
            _pull_and_load(endpoint, run, version, tmp_path / f"after-crash-v{version}")

        # 2. full store, then read-only store: publish fails cleanly and every earlier version is still served
        wait_for(lambda: all(_epochs(swarm.log(f"worker{i}.log")) > first.version.epoch + 1 for i in range(2)),
                 60, logs)
        for break_store, repair in ((store.fill, store.unfill),
                                    (lambda: store.read_only(True), lambda: store.read_only(False))):
            break_store()
            try:
                refused = _publish(swarm.operator_endpoint(), run)
                assert not refused.published, "a version was published into a broken store"
                assert _served_versions(endpoint, run) == served
                _pull_and_load(endpoint, run, served[-1], tmp_path / f"broken-{len(served)}-{time.monotonic()}")
            finally:
                repair()
        again = _publish(swarm.operator_endpoint(), run)
        assert again.published and again.version.version == served[-1] + 1, again.message + logs()
        _pull_and_load(endpoint, run, again.version.version, tmp_path / "repaired")

        # 3. the ledger holds exactly what the workers trained, the coordinator's crash notwithstanding
        wait_for(lambda: all("samples per shard" in swarm.log(f"worker{i}.log") for i in range(2)), 120, logs)
        for process in swarm.workers:
            process.terminate()  # end the lingering (SIGTERM: a clean leave)
        assert swarm.wait_workers(timeout=120) == [0, 0], logs()
        totals = dict(worker_totals(swarm.log(f"worker{i}.log")) for i in range(2))
        assert all("coordinator unreachable" in swarm.log(f"worker{i}.log") for i in range(2))
        with CoordinatorClient(endpoint) as client:
            board = {entry.peer_id: entry.samples for entry in client.leaderboard(run, include_unverified=True).entries}
        assert board == totals


def _publish_error(endpoint: Endpoint, run: str) -> BaseException | None:
    """The error a publish ends with when the coordinator is killed under it (None if it completed)."""
    try:
        _publish(endpoint, run)
    except CoordinatorError as exc:
        return exc
    return None
