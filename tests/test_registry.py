"""The adapter registry: snapshots cross-checked across real hivemind peers, the quality gate, signed manifests,
resumable and cached pulls, merged pulls, stacked runs, retention and export, against a real coordinator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import hivemind
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from coordinator.publisher import PublishPolicy, SnapshotError, choose_agreeing_state, fetch_shard_snapshot
from coordinator.server import Coordinator, CoordinatorConfig
from swarm.client import CoordinatorClient, CoordinatorError
from swarm.manifest import MANIFEST_FILE, read_signed_manifest
from swarm.model import build_tiny_model
from swarm.pull import STACK_FILE, PullError, fetch_stack, pull
from swarm.spec import RunSpec
from swarm.state_download import DownloadedState, list_state_sharers
from tests.test_store_and_pull import lora_filled, publish_tensors
from worker.model_setup import build_run_model

PARENT = RunSpec(name="parent", data_slices=2)
CHILD = RunSpec(name="child", data_slices=2, parent="parent@1", seed=7)
TOKENS = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


def lora_random(seed: int, scale: float = 0.05, spec: RunSpec = PARENT) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tensor.shape, generator=generator) * scale
            for name, tensor in lora_filled(0.0, spec).items()}


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nomoat_cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def make_coordinator(tmp_path):
    running = []

    def start(**policy) -> Coordinator:
        policy.setdefault("max_base_regression", 1.0)  # these tests publish random adapters, worse than the base
        config = CoordinatorConfig(data_dir=tmp_path / f"coord{len(running)}", port=0, publish=False,
                                   publish_policy=PublishPolicy(**policy))
        running.append(Coordinator(config).start())
        return running[-1]

    yield start
    for coordinator in running:
        coordinator.stop()


@pytest.fixture(scope="module")
def shared_coordinator(tmp_path_factory):
    """One coordinator (default policy) for the tests that each need a run with one published version."""
    config = CoordinatorConfig(data_dir=tmp_path_factory.mktemp("shared"), port=0, publish=False,
                               publish_policy=PublishPolicy(max_base_regression=1.0))  # random adapters
    coordinator = Coordinator(config).start()
    yield coordinator
    coordinator.stop()


@pytest.fixture()
def published(shared_coordinator, request):
    """(coordinator, run name, version 1's record): a run of its own, named after the test."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:60].strip("-")
    shared_coordinator.runs.launch(PARENT.model_copy(update={"name": name}))
    outcome = publish_tensors(shared_coordinator, name, lora_random(1), epoch=1)
    assert outcome.published, outcome.message
    return shared_coordinator, name, outcome.version


# Trustworthy snapshots: real hivemind peers serve a shard's state; one diverges, one sends NaN.

def serve_state(initial_peer: str, run_id: str, tensors: list[torch.Tensor], epoch: int, folder: Path):
    """A real peer process serving ``tensors`` as a shard's state at ``epoch`` (see tests/state_peer.py); it
    prints its peer ID once it serves."""
    path = folder / f"state-{run_id}-{len(list(folder.iterdir()))}.pt"
    torch.save(tensors, path)
    return subprocess.Popen([sys.executable, "-m", "tests.state_peer", initial_peer, run_id, str(path), str(epoch)],
                            stdout=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def state_swarm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("states")
    run_id = "crosscheck_shard0"
    honest = [torch.randn(8, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    diverged = [tensor + 0.5 for tensor in honest]
    poisoned = [tensor.clone() for tensor in honest]
    poisoned[1][0, 0] = float("nan")
    coordinator_dht = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    peer = str(coordinator_dht.get_visible_maddrs()[0])
    served = [serve_state(peer, run_id, tensors, 5, folder) for tensors in (honest, honest, diverged, poisoned)]
    ids = [process.stdout.readline().strip() for process in served]  # all serving now ...
    deadline = time.monotonic() + 60
    while len(list_state_sharers(coordinator_dht, run_id)) < len(served):  # ... and all announced on the DHT
        assert time.monotonic() < deadline, list_state_sharers(coordinator_dht, run_id)
        time.sleep(0.5)
    yield coordinator_dht, run_id, honest, ids
    for process in served:
        process.terminate()
    for process in served:
        process.wait(timeout=30)
    coordinator_dht.shutdown()


def test_a_diverging_and_a_nan_peer_are_left_out_of_the_snapshot(state_swarm):
    dht, run_id, honest, (good1, good2, diverged, poisoned) = state_swarm
    names = [f"t{i}" for i in range(3)]
    # a run with lr 0.01: honest peers may drift 5 steps (0.05 per element) apart; the diverged one is 0.5 off
    snapshot = fetch_shard_snapshot(dht, run_id, 0, names, [tuple(t.shape) for t in honest], timeout=30,
                                    policy=PublishPolicy(compare_peers=4, step_size=0.01), authorized=state_swarm[3])
    assert set(snapshot.agreeing_peers) == {good1, good2}
    reasons = dict(snapshot.excluded)
    assert "disagrees with the majority" in reasons[diverged]
    assert "non-finite" in reasons[poisoned]
    assert all(torch.equal(snapshot.tensors[name], tensor) for name, tensor in zip(names, honest))


def test_a_spec_mismatch_aborts_the_snapshot(state_swarm):
    dht, run_id, honest, _ = state_swarm
    names = [f"t{i}" for i in range(3)]
    with pytest.raises(SnapshotError, match="shape"):
        fetch_shard_snapshot(dht, run_id, 0, names, [(8, 15)] * 3, timeout=30, policy=PublishPolicy(compare_peers=4),
                             authorized=state_swarm[3])


def test_peers_that_split_evenly_give_no_snapshot_and_stale_peers_are_not_compared():
    honest = [torch.ones(4, 4)]
    other = [torch.full((4, 4), 2.0)]
    state = lambda peer, epoch, tensors: DownloadedState(peer, epoch, tensors)  # noqa: E731
    with pytest.raises(SnapshotError, match="disagree and no majority"):
        choose_agreeing_state([state("a", 3, honest), state("b", 3, other)], [(4, 4)], PublishPolicy())
    # peers a few optimizer steps apart (a round one of them stepped alone) still agree
    drifted = [torch.ones(4, 4) + 0.02]
    close = choose_agreeing_state([state("a", 3, honest), state("b", 3, drifted)], [(4, 4)],
                                  PublishPolicy(step_size=0.01))
    assert close.cross_checked
    # every serving peer votes, whatever its epoch: the majority agreeing at epoch 4 wins over an older peer, which
    # is outvoted; one far behind is left out as behind
    choice = choose_agreeing_state([state("a", 4, honest), state("b", 4, honest), state("e", 4, honest),
                                    state("c", 3, other), state("d", 1, honest)], [(4, 4)], PublishPolicy())
    assert [s.peer_id for s in choice.chosen] == ["a", "b", "e"]
    assert "disagrees with the majority" in dict(choice.excluded)["c"]
    assert "behind the compared epoch 4" in dict(choice.excluded)["d"]
    # one peer alone is used only when it is the only authorized peer serving, and says so
    alone = choose_agreeing_state([state("a", 4, honest)], [(4, 4)], PublishPolicy())
    assert not alone.cross_checked and alone.chosen[0].peer_id == "a"
    with pytest.raises(SnapshotError, match="no majority"):
        choose_agreeing_state([state("a", 4, honest)], [(4, 4)], PublishPolicy(), serving=3)


# The quality gate

def test_the_gate_refuses_a_worse_version_and_status_shows_why(make_coordinator, tmp_path):
    coordinator = make_coordinator(max_eval_regression=0.005)  # the tiny model's losses sit close together
    coordinator.runs.launch(PARENT)
    first = publish_tensors(coordinator, PARENT.name, lora_random(1, scale=0.01), epoch=1)
    assert first.published, first.message
    worse = publish_tensors(coordinator, PARENT.name, lora_random(2, scale=3.0), epoch=2)
    assert not worse.published and "worse than version 1" in worse.message
    assert coordinator.storage.versions.get_version(PARENT.name).version == 1  # version 1 is still the one served
    rejected = coordinator.storage.versions.rejected_snapshots(PARENT.name)
    assert len(rejected) == 1 and rejected[0].epoch == 2 and rejected[0].eval_loss > first.version.eval_loss * 1.005
    shown = cli("status", "-c", coordinator.address)
    assert "rejected snapshot at epoch 2" in shown.stdout and "worse than version 1" in shown.stdout, shown.stderr
    assert pull(coordinator.address, PARENT.name, tmp_path / "out").version == 1


# Signed manifests

def test_tampered_manifest_and_tampered_weights_are_refused(published, tmp_path):
    coordinator, run, record = published
    pulled = pull(coordinator.address, run, tmp_path / "ok")
    assert pulled.manifest.coordinator == coordinator.identity.peer_id
    assert read_signed_manifest(tmp_path / "ok").verify(coordinator.identity.peer_id).sha256 == record.sha256

    manifest_path = Path(record.path) / MANIFEST_FILE
    original = manifest_path.read_bytes()
    manifest_path.write_bytes(original.replace(b'"samples":', b'"samples":1'))  # a claim changed after signing
    with pytest.raises(PullError, match="signature does not match"):
        pull(coordinator.address, run, tmp_path / "bad1", cache_dir=tmp_path / "cache1")
    manifest_path.write_bytes(original)

    weights = Path(record.path) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(PullError, match="adapter_model.safetensors hashes to .* tampered"):
        pull(coordinator.address, run, tmp_path / "bad2", cache_dir=tmp_path / "cache2")
    assert not (tmp_path / "bad1").exists() and not (tmp_path / "bad2").exists()
    with pytest.raises(PullError, match="not by the trusted coordinator"):
        pull(coordinator.address, run, tmp_path / "bad3", trusted_signer="QmSomebodyElse")
    failed = cli("pull", "-c", coordinator.address, "--run", run, "--out", str(tmp_path / "bad4"),
                 "--cache-dir", str(tmp_path / "cache4"))
    assert failed.returncode != 0 and "tampered" in failed.stderr


def test_a_coordinator_with_another_key_at_a_known_address_is_refused(published, tmp_path):
    coordinator, run, _ = published
    pull(coordinator.address, run, tmp_path / "first")  # trusted on first use
    known_file = Path(os.environ["XDG_CONFIG_HOME"]) / "nomoat" / "known_coordinators.json"
    known = json.loads(known_file.read_text())
    assert known[coordinator.address] == coordinator.identity.peer_id
    known[coordinator.address] = "QmAnImpostorOrAnOldKey"
    known_file.write_text(json.dumps(known))
    with pytest.raises(PullError, match="not by the trusted coordinator QmAnImpostorOrAnOldKey") as refused:
        pull(coordinator.address, run, tmp_path / "second")
    # and it says what to do: the file that pins the key, and how to accept a key the operator really changed
    assert (f"pinned in {known_file}). Nothing was downloaded. If its operator changed the coordinator's key, "
            f"confirm the new key {coordinator.identity.peer_id} with them, then delete the \"{coordinator.address}\" "
            f"entry from that file (the next pull pins the new key) or pull with --trust "
            f"{coordinator.identity.peer_id}") in str(refused.value)
    assert not (tmp_path / "second").exists()


# Pull for real use

def test_an_interrupted_pull_resumes_and_a_second_pull_downloads_nothing(published, tmp_path):
    coordinator, run, _ = published
    received = []

    def cut_after_three_chunks(size: int) -> None:
        received.append(size)
        if len(received) == 3:
            raise ConnectionError("link dropped")

    with pytest.raises(ConnectionError):
        pull(coordinator.address, run, tmp_path / "out", chunk_bytes=4096, on_bytes=cut_after_three_chunks)
    assert not (tmp_path / "out").exists()
    held = sum(received)
    resumed = pull(coordinator.address, run, tmp_path / "out", version="latest", chunk_bytes=4096)
    total = sum(entry.size for entry in resumed.manifest.files)
    assert 0 < held < total and resumed.downloaded_bytes == total - held
    model = PeftModel.from_pretrained(build_tiny_model(), str(tmp_path / "out"))
    assert torch.isfinite(logits_of(model)).all()
    again = pull(coordinator.address, run, tmp_path / "out", version=1)
    elsewhere = pull(coordinator.address, run, tmp_path / "elsewhere", version="1")
    assert again.downloaded_bytes == 0 and elsewhere.downloaded_bytes == 0
    with pytest.raises(PullError, match="'latest' or a version number"):
        pull(coordinator.address, run, tmp_path / "x", version="newest")


def test_merged_pull_loads_without_peft_and_matches_the_adapter(published, tmp_path):
    coordinator, run, _ = published
    result = cli("pull", "-c", coordinator.address, "--run", run, "--version", "1", "--merge",
                 "--out", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    pull(coordinator.address, run, tmp_path / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    adapted = PeftModel.from_pretrained(build_tiny_model(), str(tmp_path / "adapter"))
    assert torch.allclose(logits_of(merged), logits_of(adapted), atol=1e-5)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (tmp_path / "merged" / "nomoat_tokenizer.json").exists()
    from transformers import AutoTokenizer  # every Hugging Face tool loads the tiny preset's byte tokenizer too

    assert AutoTokenizer.from_pretrained(str(tmp_path / "merged")).encode("hé", add_special_tokens=False) == [
        104, 195, 169]


# Stacking

def test_a_stacked_run_gives_the_logits_of_base_parent_and_child_applied_by_hand(make_coordinator, tmp_path):
    coordinator = make_coordinator(keep_versions=1)
    coordinator.runs.launch(PARENT)
    parent_v1 = publish_tensors(coordinator, PARENT.name, lora_random(1), epoch=1).version
    bad_parent = CHILD.model_copy(update={"name": "orphan", "parent": "parent@9"})
    with pytest.raises(CoordinatorError, match="has not published version 9"):
        with CoordinatorClient(coordinator.operator_endpoint()) as client:
            client.launch_run(bad_parent)
    launched = cli("launch", "-c", coordinator.address, "--operator-token-file", str(coordinator.operator_token_file),
                   "--name", CHILD.name, "--parent", "parent@1",
                   "--data-slices", "2", "--seed", "7")
    assert launched.returncode == 0, launched.stderr
    runtime = coordinator.runs.get(CHILD.name)
    assert [str(link) for link in runtime.chain] == ["parent@1"]
    publish_tensors(coordinator, PARENT.name, lora_random(3, scale=0.001), epoch=2)  # retention keeps 1 ...
    assert coordinator.storage.versions.get_version(PARENT.name, 1).collected_at is None  # ... but never a parent
    child = publish_tensors(coordinator, CHILD.name, lora_random(2, spec=CHILD), epoch=1)
    assert child.published, child.message

    # what a worker of the stacked run trains on: base + parent, fetched and verified from the coordinator
    manifest, stack = fetch_stack(coordinator.address, PARENT.name, 1)
    worker_model = build_run_model(CHILD, runtime.record.base_model_fingerprint, parent_adapters=stack)
    def base_weights(peft_model):
        return {name.replace(".base_layer", ""): tensor for name, tensor in
                peft_model.get_base_model().state_dict().items() if "lora_" not in name}

    worker_base, coordinator_base = base_weights(worker_model.model), base_weights(runtime.model)
    assert worker_base.keys() == coordinator_base.keys()
    for name, tensor in coordinator_base.items():
        assert torch.equal(worker_base[name], tensor), name

    pulled = pull(coordinator.address, CHILD.name, tmp_path / "merged", layout="merged")
    assert [str(link) for link in pulled.manifest.chain] == ["parent@1"]
    assert pulled.manifest.parent.sha256 == parent_v1.sha256
    chain = pull(coordinator.address, CHILD.name, tmp_path / "chain", layout="chain")
    order = json.loads((chain.path / STACK_FILE).read_text())["apply_in_order"]
    assert [(entry["run"], entry["version"]) for entry in order] == [("parent", 1), ("child", 1)]

    by_hand = build_tiny_model()
    by_hand = PeftModel.from_pretrained(by_hand, str(chain.path / order[0]["folder"])).merge_and_unload()
    by_hand = PeftModel.from_pretrained(by_hand, str(chain.path / order[1]["folder"]))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert torch.allclose(logits_of(merged), logits_of(by_hand), atol=1e-5)
    assert not torch.allclose(logits_of(merged), logits_of(build_tiny_model()), atol=1e-3)  # both adapters count


# Retention

def test_retention_keeps_the_newest_releases_and_versions_being_pulled(make_coordinator, tmp_path):
    coordinator = make_coordinator(keep_versions=1, max_eval_regression=1e9)
    coordinator.runs.launch(PARENT)
    publish_tensors(coordinator, PARENT.name, lora_random(1), epoch=1)
    with CoordinatorClient(coordinator.operator_endpoint()) as client:
        assert client.mark_release(PARENT.name, 1).release
        publish_tensors(coordinator, PARENT.name, lora_random(2), epoch=2)
        # a pull of version 2 is under way: the service's stream has sent its header and holds the version
        # (over gRPC, a version this small is read out in one go; the lease matters for big ones)
        stream = coordinator.service.pull(PARENT.name, 2, chunk_bytes=4096)
        header = next(stream)
        publish_tensors(coordinator, PARENT.name, lora_random(3), epoch=3)  # retention runs after the publish
        assert coordinator.storage.versions.get_version(PARENT.name, 2).collected_at is None
        received = sum(len(data) for _, _, data in stream)
    assert received == sum(entry.size for entry in header.files)
    assert coordinator.retention.collect(PARENT.name) == [2]  # the pull is over: now it goes
    assert not Path(coordinator.storage.versions.get_version(PARENT.name, 2).path).exists()
    assert Path(coordinator.storage.versions.get_version(PARENT.name, 1).path).exists()  # the release stays
    with pytest.raises(CoordinatorError, match="removed by retention"):
        pull(coordinator.address, PARENT.name, tmp_path / "out", version=2)
    shown = cli("status", "-c", coordinator.address).stdout
    assert "version 1:" in shown and "[release]" in shown and "[removed by retention]" in shown
    assert pull(coordinator.address, PARENT.name, tmp_path / "out", version=1).version == 1


# Export

def test_export_writes_a_hugging_face_repo_with_a_model_card(published, tmp_path):
    coordinator, run, _ = published
    result = cli("export", "-c", coordinator.address, "--run", run, "--out", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    card = (tmp_path / "repo" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and run in card
    assert coordinator.identity.peer_id in card  # the signer
    assert (tmp_path / "repo" / "adapter_model.safetensors").exists()
    assert (tmp_path / "repo" / MANIFEST_FILE).exists()
    PeftModel.from_pretrained(build_tiny_model(), str(tmp_path / "repo"))
