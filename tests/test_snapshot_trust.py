"""Snapshots strangers cannot poison, with real hivemind peers as processes (tests/fake_peer.py) and a real
coordinator: colluders, epoch liars, overwritten all_averagers entries and a 1 GiB state stream cannot choose,
stop or bloat what is published; the quality gate compares with the base model and with the run's history."""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from coordinator.publisher import PublishPolicy
from coordinator.server import Coordinator, CoordinatorConfig
from coordinator.version_change import adapter_tensors, as_file_names
from swarm.identity import load_or_create_identity
from swarm.spec import RunSpec
from swarm.state_download import StateDownloadError, default_state_cap, download_state, list_state_sharers
from tests.fake_peer import access_options
from tests.test_registry import lora_random
from tests.test_store_and_pull import publish_tensors

SPEC = RunSpec(name="trust", data_slices=2)
HONEST_EPOCH = 7


class Peers:
    """Fake peer processes of the run's shard 0, each with its own identity key, reaped at the end."""

    def __init__(self, coordinator: Coordinator, folder: Path):
        self.coordinator, self.folder = coordinator, folder
        self.processes: dict[str, subprocess.Popen] = {}
        self.runtime = coordinator.runs.get(SPEC.name)

    def identity(self, name: str) -> str:
        return load_or_create_identity(self.folder / f"{name}.key").peer_id

    def start(self, specs: dict[str, dict], register: bool = True) -> list[str]:
        """Start one peer per name (options: state tensors, epoch, progress epoch, hide, flood); returns their
        peer IDs once all serve. ``register``: they join the run for shard 0 (authorized peers)."""
        started = []
        for name, options in specs.items():
            peer_id = self.identity(name)
            command = [sys.executable, "-m", "tests.fake_peer", "--initial-peer", self.coordinator.initial_peers[0],
                       "--run-id", SPEC.shard_run_id(0), "--identity", str(self.folder / f"{name}.key"),
                       *access_options(self.coordinator.identity, self.folder / f"{name}.key", SPEC.name)]
            if "state" in options:
                path = self.folder / f"{name}.pt"
                torch.save([options["state"][n] for n in self.runtime.shard_names[0]], path)
                command += ["--state", str(path), "--state-epoch", str(options["epoch"])]
            if "progress" in options:
                command += ["--progress-epoch", str(options["progress"])]
            command += ["--hide", *options.get("hide", [])] if options.get("hide") else []
            command += ["--flood-bytes", str(options["flood"])] if options.get("flood") else []
            self.processes[name] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            started.append((name, peer_id))
            if register:
                self.coordinator.storage.runs.register_worker(SPEC.name, peer_id, name, [0], 0, "cpu")
        for name, peer_id in started:
            assert _first_line(self.processes[name], timeout=60) == peer_id, f"{name} did not start"
        return [peer_id for _, peer_id in started]

    def stop(self, *names: str) -> None:
        for name in names:
            self.processes[name].terminate()
        for name in names:
            self.processes.pop(name).wait(timeout=30)
            for worker in self.coordinator.storage.runs.live_workers(SPEC.name, 3600):
                if worker.peer_id == self.identity(name):
                    self.coordinator.storage.runs.mark_worker_left(worker.worker_id)


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    """The process's first line of output, or "" if it prints none in time (its DHT child may hold the pipe
    open after it died)."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline().strip()


def honest_lora(runtime, scale: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """The run's initial LoRA with a small random step on every tensor: close to the base model."""
    generator = torch.Generator().manual_seed(seed)
    return {name: tensor + torch.randn(tensor.shape, generator=generator) * scale
            for name, tensor in runtime.initial_lora.items()}


def wait_for_sharers(coordinator: Coordinator, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(list_state_sharers(coordinator.dht, SPEC.shard_run_id(0))) < count:
        assert time.monotonic() < deadline
        time.sleep(0.3)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """A coordinator whose run has three honest authorized peers serving the same state at epoch 7."""
    folder = tmp_path_factory.mktemp("trust")
    policy = PublishPolicy(max_base_regression=0.001, attempts=1)
    coordinator = Coordinator(CoordinatorConfig(data_dir=folder / "coord", port=0, publish=False,
                                                publish_policy=policy)).start()
    coordinator.runs.launch(SPEC)
    peers = Peers(coordinator, folder)
    honest = honest_lora(peers.runtime, 1e-4)
    ids = peers.start({f"honest{i}": dict(state=honest, epoch=HONEST_EPOCH, progress=HONEST_EPOCH) for i in range(3)})
    wait_for_sharers(coordinator, 3)
    yield coordinator, peers, honest, ids
    peers.stop(*list(peers.processes))
    coordinator.stop()


def _is(snapshot_tensors: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(tensor, lora[name]) for name, tensor in snapshot_tensors.items())


def test_two_colluders_of_five_at_a_higher_epoch_cannot_choose_the_state(swarm):
    coordinator, peers, honest, honest_ids = swarm
    poisoned = lora_random(5, scale=0.5, spec=SPEC)
    peers.start({f"colluder{i}": dict(state=poisoned, epoch=HONEST_EPOCH + 1, progress=HONEST_EPOCH + 1)
                 for i in range(2)})
    # two throwaway identities (never joined) serving the poison at the honest epoch are never asked
    strangers = peers.start({f"stranger{i}": dict(state=poisoned, epoch=HONEST_EPOCH) for i in range(2)},
                            register=False)
    try:
        wait_for_sharers(coordinator, 7)
        [snapshot] = coordinator.publisher.fetch_snapshots(peers.runtime)
        assert snapshot.epoch == HONEST_EPOCH and set(snapshot.agreeing_peers) == set(honest_ids)
        assert _is(snapshot.tensors, honest)
        assert {peer for peer, _ in snapshot.excluded} == {peers.identity("colluder0"), peers.identity("colluder1")}
        assert not set(strangers) & {peer for peer, _ in snapshot.excluded}
    finally:
        peers.stop("colluder0", "colluder1", "stranger0", "stranger1")


def test_one_attacker_claiming_a_higher_epoch_and_hiding_the_honest_peers_does_not_win(swarm):
    coordinator, peers, honest, honest_ids = swarm
    poisoned = lora_random(6, scale=0.5, spec=SPEC)
    peers.start({"liar": dict(state=poisoned, epoch=HONEST_EPOCH + 2, progress=HONEST_EPOCH + 2, hide=honest_ids)})
    try:
        deadline = time.monotonic() + 30  # the honest peers' entries are overwritten: the hint lists the liar only
        while set(list_state_sharers(coordinator.dht, SPEC.shard_run_id(0))) & set(honest_ids):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        [snapshot] = coordinator.publisher.fetch_snapshots(peers.runtime)
        assert set(snapshot.agreeing_peers) == set(honest_ids) and _is(snapshot.tensors, honest)
        assert "ahead of the compared epoch 7" in dict(snapshot.excluded)[peers.identity("liar")]
    finally:
        peers.stop("liar")


def test_colluders_claiming_epoch_2_to_the_40_do_not_stop_later_publishing(swarm):
    coordinator, peers, honest, honest_ids = swarm
    poisoned = lora_random(7, scale=0.5, spec=SPEC)
    peers.start({f"far{i}": dict(state=poisoned, epoch=2**40, progress=2**40) for i in range(2)})
    try:
        first = coordinator.publisher.publish(SPEC.name)
        assert first.published, first.message
        assert first.version.epoch == HONEST_EPOCH  # never the liars' epoch
        assert _is({name.replace(".default.", "."): t for name, t in honest.items()},
                   adapter_tensors(Path(first.version.path)))
        # the honest peers move on one epoch; the next version is published
        later = {name: tensor + 1e-4 for name, tensor in honest.items()}
        peers.stop("honest0", "honest1", "honest2")
        ids = peers.start({f"honest{i}": dict(state=later, epoch=HONEST_EPOCH + 1, progress=HONEST_EPOCH + 1)
                           for i in range(3)})
        assert ids == honest_ids  # (their all_averagers entries may still be hidden: they are asked anyway)
        second = coordinator.publisher.publish(SPEC.name)
        assert second.published, second.message
        assert (second.version.version, second.version.epoch) == (2, HONEST_EPOCH + 1)
    finally:
        peers.stop("far0", "far1")


def test_a_1_gib_state_stream_is_cut_off_without_being_buffered(swarm):
    coordinator, peers, _, _ = swarm
    [flooder] = peers.start({"flooder": dict(flood=2**30, epoch=HONEST_EPOCH)})
    try:
        dht_process = psutil.Process(coordinator.dht.pid)
        before = dht_process.memory_info().rss
        shapes = peers.runtime.shard_shapes[0]
        cap = default_state_cap(sum(4 * torch.Size(shape).numel() for shape in shapes))
        assert cap < 8 * 2**20  # the tiny model's shard: a few MiB at most
        started = time.monotonic()
        with pytest.raises(StateDownloadError, match=f"more than the {cap} bytes"):
            download_state(coordinator.dht, SPEC.shard_run_id(0), flooder, num_parameters=len(shapes), timeout=60,
                           max_bytes=cap)
        assert time.monotonic() - started < 30
        assert dht_process.memory_info().rss - before < 128 * 2**20  # far below the 1 GiB streamed at it
    finally:
        peers.stop("flooder")


@pytest.fixture()
def gate_coordinator(tmp_path):
    def start(**policy) -> Coordinator:
        config = CoordinatorConfig(data_dir=tmp_path / "gate", port=0, publish=False,
                                   publish_policy=PublishPolicy(**policy))
        coordinator = Coordinator(config).start()
        coordinator.runs.launch(SPEC)
        started.append(coordinator)
        return coordinator

    started: list[Coordinator] = []
    yield start
    for coordinator in started:
        coordinator.stop()


def test_a_first_version_worse_than_the_base_model_is_refused(gate_coordinator):
    coordinator = gate_coordinator()  # default policy: never worse than the base
    outcome = publish_tensors(coordinator, SPEC.name, lora_random(2, scale=3.0, spec=SPEC), epoch=1)
    assert not outcome.published and "worse than the base model's" in outcome.message
    assert coordinator.storage.versions.get_version(SPEC.name) is None
    [rejected] = coordinator.storage.versions.rejected_snapshots(SPEC.name)
    assert rejected.eval_loss > coordinator.publisher.base_eval_loss(coordinator.runs.get(SPEC.name))
    runtime = coordinator.runs.get(SPEC.name)
    assert publish_tensors(coordinator, SPEC.name, runtime.initial_lora, epoch=1).published  # the base itself passes


def test_a_version_change_far_out_of_line_with_the_run_is_refused(gate_coordinator):
    coordinator = gate_coordinator(max_eval_regression=1e9, max_base_regression=1e9)  # only the change bound
    runtime = coordinator.runs.get(SPEC.name)
    step = honest_lora(runtime, 1e-3, seed=1)
    delta = {name: step[name] - tensor for name, tensor in runtime.initial_lora.items()}
    at = lambda k: {name: tensor + k * delta[name] for name, tensor in runtime.initial_lora.items()}  # noqa: E731
    for epoch in (1, 2, 3):  # one step per epoch: the run's history
        assert publish_tensors(coordinator, SPEC.name, at(epoch), epoch=epoch).published
    jump = publish_tensors(coordinator, SPEC.name, at(3 + 50), epoch=4)  # 50 steps' worth in one epoch
    assert not jump.published and "largest per-epoch change" in jump.message
    assert "largest per-epoch change" in coordinator.storage.versions.rejected_snapshots(SPEC.name)[0].reason
    assert publish_tensors(coordinator, SPEC.name, at(5), epoch=5).published  # in line again: published
    assert as_file_names(at(5)).keys() == adapter_tensors(
        Path(coordinator.storage.versions.get_version(SPEC.name).path)).keys()
