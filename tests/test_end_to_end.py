"""launch -> donate (2 worker processes, 2 shards) -> publish -> pull -> load with PEFT and generate, through the
real CLI, a real coordinator, hivemind on loopback and SQLite. One swarm is shared by the tests of this module."""

import json
import re
import subprocess
import sys
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from swarm.client import CoordinatorClient
from swarm.data import load_texts, split_dataset
from swarm.evaluation import eval_loss
from swarm.local_swarm import LocalSwarm
from swarm.manifest import read_signed_manifest
from swarm.model import build_tiny_model, lora_parameters
from swarm.spec import RunSpec
from swarm.tokenizer import ByteTokenizer

RUN = "e2e"
EPOCHS = 4


def cli(*args, check=True, timeout=300):
    result = subprocess.run([sys.executable, "-m", "nomoat_cli", *args], capture_output=True, text=True,
                            timeout=timeout, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    if check and result.returncode != 0:
        raise AssertionError(f"swarm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("swarm")
    with LocalSwarm(workdir) as local:
        address = local.start_coordinator(["--no-publish"])
        cli("launch", "-c", address, "--operator-token-file", str(local.operator_token_file),
            "--name", RUN, "--base-model", "tiny", "--dataset", "sample", "--shards", "2",
            "--batch-size-per-step", "8", "--target-batch-size", "256", "--lr", "0.01", "--data-slices", "2",
            "--averaging-matchmaking-time", "2", "--averaging-averaging-timeout", "20",
            "--averaging-progress-refresh-s", "0.5")
        for index in range(2):
            local.start_worker(address, RUN, index, ["--max-epochs", str(EPOCHS), "--wait-for-peers", "2",
                                                     "--save-lora", str(workdir / f"lora{index}.pt"),
                                                     "--linger", "120"])
        saved = [workdir / f"lora{index}.pt" for index in range(2)]
        deadline = time.monotonic() + 240
        while not all(path.exists() for path in saved):
            assert time.monotonic() < deadline, local.log("worker0.log")[-3000:] + local.log("worker1.log")[-3000:]
            assert all(p.poll() is None for p in local.workers), local.log("worker0.log")[-3000:]
            time.sleep(0.5)
        time.sleep(1.0)  # let torch.save finish writing
        with CoordinatorClient(local.operator_endpoint(address)) as client:
            published = client.publish_now(RUN)
            assert published.published, published.message
            again = client.publish_now(RUN)
        yield {"address": address, "workdir": workdir, "saved": saved, "published": published, "again": again,
               "local": local}


# every way hivemind 1.1 falls back to local gradients for a round, as its verbose log says it (its other silent
# fallback, a spent pre-scheduled round, is averted by ShardOptimizer and so is not excused here)
FAILED_ROUND = re.compile(r"Averaging gradients failed with .*|Proceeding with local gradients|"
                          r"Averaging: received [0-9.]+% results")


def test_two_workers_hold_identical_lora_after_synchronized_epochs(swarm):
    first, second = (torch.load(path) for path in swarm["saved"])
    logs = [swarm["local"].log(f"worker{index}.log") for index in range(2)]
    failed = [FAILED_ROUND.search(log) for log in logs]
    if any(failed):
        # on an overloaded machine a round can time out; hivemind then applies local gradients (it says so at
        # INFO because workers run it verbose) and the peers differ until the next state averaging
        pytest.skip("hivemind reported a failed averaging round: " + next(m for m in failed if m).group(0))
    for log in logs:  # they averaged together (a peer that fell behind instead downloads the averaged state)
        assert "Averaged gradients with 2 peers" in log, log[-3000:]
    initial = lora_parameters(__import__("swarm.model", fromlist=["x"]).build_lora_model(
        build_tiny_model(), RunSpec(name=RUN).lora, seed=0))
    assert first.keys() == second.keys() and len(first) > 0
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-6, rtol=0), name
    moved = max((first[name] - initial[name].detach()).abs().max().item() for name in first)
    assert moved > 1e-4  # they trained, not just kept the initial values


def test_published_adapter_merges_both_shards_from_the_swarm(swarm, tmp_path):
    version = swarm["published"].version
    assert version.version == 1 and version.epoch >= EPOCHS
    assert version.eval_loss < version.base_eval_loss
    out = tmp_path / "adapter"
    result = cli("pull", "-c", swarm["address"], "--run", RUN, "--out", str(out))
    assert "version 1" in result.stdout
    # the coordinator compared both workers' states of each shard before it published, and signed the result
    manifest = read_signed_manifest(out).verify()
    assert manifest.peers_compared == 2 and manifest.version == 1
    model = PeftModel.from_pretrained(build_tiny_model(), str(out))
    pulled = {name: param for name, param in model.named_parameters() if "lora_" in name}
    layers = {name.split(".layers.")[1].split(".")[0] for name in pulled}
    assert layers == {"0", "1", "2", "3"}  # shard 0 (layers 0-1) and shard 1 (layers 2-3)
    # each shard of the published adapter is exactly the averaged state one of the workers served for it
    worker_states = [torch.load(path) for path in swarm["saved"]]
    model_names = list(worker_states[0])
    for layer_range in (("0", "1"), ("2", "3")):
        names = [n for n in model_names if n.split(".layers.")[1].split(".")[0] in layer_range]
        assert any(all(torch.equal(pulled[n], state[n]) for n in names) for state in worker_states), layer_range
    spec = RunSpec(name=RUN)
    held_out = split_dataset(load_texts("sample"), spec.eval_fraction, spec.seed).eval
    tokenizer = ByteTokenizer()
    assert eval_loss(model, held_out, tokenizer, 64) == pytest.approx(version.eval_loss, rel=1e-4)
    prompt = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode("ada has ")])
    generated = model.generate(input_ids=prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt.shape[1] + 8


def test_publish_without_new_epochs_adds_no_version(swarm):
    assert not swarm["again"].published
    assert "no new epoch" in swarm["again"].message


def test_status_reports_workers_samples_and_versions(swarm):
    result = cli("status", "-c", swarm["address"])
    assert f"run {RUN} [active, join open]:" in result.stdout and "version 1:" in result.stdout
    with CoordinatorClient(swarm["address"]) as client:
        run = client.status(RUN).runs[0]
    assert run.live_workers == 2
    assert [shard.live_workers for shard in run.shard_status] == [2, 2]
    assert all(shard.samples >= 256 * EPOCHS // 2 for shard in run.shard_status)
    assert len(run.versions[0].contributors) == 2


def test_leaderboard_credits_both_workers_with_dht_verified_receipts(swarm):
    with CoordinatorClient(swarm["address"]) as client:
        everything = client.leaderboard(RUN, include_unverified=True)
        samples_trained = client.status(RUN).runs[0].samples_trained
    assert len(everything.entries) == 2 and everything.total_samples == samples_trained
    assert sum(entry.share for entry in everything.entries) == pytest.approx(1.0)
    assert all(entry.verified_samples > 0 and entry.compute_hours > 0 for entry in everything.entries)
    result = cli("leaderboard", "-c", swarm["address"], "--run", RUN)
    assert "verified samples" in result.stdout and "worker0" in result.stdout and "worker1" in result.stdout


def test_workers_leave_cleanly_on_sigterm(swarm):
    local = swarm["local"]
    for process in local.workers:
        process.terminate()
    codes = [process.wait(timeout=60) for process in local.workers]
    assert codes == [0, 0], local.log("worker0.log")[-2000:]
    with CoordinatorClient(swarm["address"]) as client:
        assert client.status(RUN).runs[0].live_workers == 0


def test_a_run_stacked_on_the_published_version_trains_and_publishes_the_chain(swarm, tmp_path):
    """A worker of a stacked run fetches the parent version, merges it into its base and trains a new LoRA on
    top; the pulled merged model equals base + parent + child applied by hand with stock PEFT."""
    local, address = swarm["local"], swarm["address"]
    child = "e2e-child"
    cli("launch", "-c", address, "--operator-token-file", str(local.operator_token_file),
        "--name", child, "--parent", f"{RUN}@1", "--base-model", "tiny",
        "--dataset", "sample", "--batch-size-per-step", "8", "--target-batch-size", "64", "--lr", "0.01",
        "--data-slices", "2", "--averaging-matchmaking-time", "2", "--averaging-averaging-timeout", "20",
        "--averaging-progress-refresh-s", "0.5")
    saved = swarm["workdir"] / "child-lora.pt"
    worker = local.start_worker(address, child, 2, ["--max-epochs", "2", "--save-lora", str(saved),
                                                    "--linger", "60"])
    deadline = time.monotonic() + 180
    while not saved.exists():
        assert time.monotonic() < deadline and worker.poll() is None, local.log("worker2.log")[-3000:]
        time.sleep(0.5)
    time.sleep(1.0)
    with CoordinatorClient(local.operator_endpoint(address)) as client:
        published = client.publish_now(child)
    assert published.published, published.message
    assert list(published.version.chain) == [f"{RUN}@1"]
    assert published.version.eval_loss < published.version.base_eval_loss  # it learned on top of the parent
    worker.terminate()
    assert worker.wait(timeout=60) == 0

    cli("pull", "-c", address, "--run", child, "--merge", "--out", str(tmp_path / "merged"))
    cli("pull", "-c", address, "--run", child, "--chain", "--out", str(tmp_path / "chain"))
    order = [entry["folder"] for entry in
             json.loads((tmp_path / "chain" / "stack.json").read_text())["apply_in_order"]]
    assert len(order) == 2 and order[0].startswith(f"00-{RUN}-v1")
    by_hand = PeftModel.from_pretrained(build_tiny_model(), str(tmp_path / "chain" / order[0])).merge_and_unload()
    by_hand = PeftModel.from_pretrained(by_hand, str(tmp_path / "chain" / order[1]))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    prompt = torch.tensor([[256] + ByteTokenizer().encode("ada has a garden")])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=prompt).logits, by_hand(input_ids=prompt).logits, atol=1e-5)
