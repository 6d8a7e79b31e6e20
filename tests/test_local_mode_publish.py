"""A local-mode run end to end through the real CLI: launch with ``--averaging-mode local`` -> two ``swarm donate``
processes -> the coordinator's snapshot cross-checks both workers' outer parameters and publishes -> ``swarm
pull`` verifies it and PEFT loads it; the receipts are verified against the swarm's progress records."""

from __future__ import annotations

import time

import torch
from peft import PeftModel

from swarm.client import CoordinatorClient
from swarm.local_swarm import LocalSwarm
from swarm.manifest import read_signed_manifest
from swarm.model import build_tiny_model
from tests.test_end_to_end import cli

RUN = "local-e2e"
EPOCHS = 4


def test_a_local_mode_run_publishes_the_outer_parameters_both_workers_agree_on(tmp_path):
    with LocalSwarm(tmp_path) as local:
        address = local.start_coordinator(["--no-publish"])
        cli("launch", "-c", address, "--operator-token-file", str(local.operator_token_file),
            "--name", RUN, "--base-model", "tiny", "--dataset", "sample", "--shards", "1",
            "--batch-size-per-step", "8", "--target-batch-size", "128", "--data-slices", "2",
            "--averaging-mode", "local", "--averaging-compression", "fp16",
            "--averaging-matchmaking-time", "2", "--averaging-averaging-timeout", "20",
            "--averaging-progress-refresh-s", "0.5")
        saved = [tmp_path / f"lora{index}.pt" for index in range(2)]
        for index in range(2):
            local.start_worker(address, RUN, index, ["--max-epochs", str(EPOCHS), "--wait-for-peers", "2",
                                                     "--save-lora", str(saved[index]), "--linger", "120"])
        deadline = time.monotonic() + 240
        logs = lambda: local.log("worker0.log")[-3000:] + local.log("worker1.log")[-3000:]  # noqa: E731
        while not all(path.exists() for path in saved):
            assert time.monotonic() < deadline, logs()
            assert all(process.poll() is None for process in local.workers), logs()
            time.sleep(0.5)
        time.sleep(1.0)  # let torch.save finish writing
        states = [torch.load(path) for path in saved]
        for name in states[0]:  # both hold the outer parameters (fp16 travel rounds each peer's deltas apart)
            assert torch.allclose(states[0][name], states[1][name], atol=1e-4, rtol=1e-3), name
        with CoordinatorClient(local.operator_endpoint(address)) as client:
            published = client.publish_now(RUN)
            assert published.published, published.message + logs()
            board = client.leaderboard(RUN)
        version = published.version
        assert version.epoch >= EPOCHS and version.eval_loss < version.base_eval_loss - 0.05
        assert len(board.entries) == 2 and all(entry.verified_samples > 0 for entry in board.entries)
        out = tmp_path / "adapter"
        cli("pull", "-c", address, "--run", RUN, "--out", str(out))
        manifest = read_signed_manifest(out).verify()
        assert manifest.peers_compared == 2
        model = PeftModel.from_pretrained(build_tiny_model(), str(out))
        pulled = {name: param for name, param in model.named_parameters() if "lora_" in name}
        assert pulled and all(torch.allclose(pulled[name], states[0][name], atol=1e-4, rtol=1e-3) for name in pulled)
        for process in local.workers:
            process.terminate()
        assert [process.wait(timeout=60) for process in local.workers] == [0, 0], logs()
