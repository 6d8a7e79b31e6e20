"""One chat run end to end: ``swarm launch`` with a chat JSONL from the operator's dataset folder on a real
coordinator, one worker joins and trains a few steps on what the coordinator streamed it: its loss is finite, its
batches mask the prompts, and the coordinator's held-out eval (what publish gates on) masks them the same way."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import worker.training as training_module
from coordinator.server import Coordinator, CoordinatorConfig
from nomoat_cli.app import app
from swarm.data import IGNORE_INDEX, encode_batch
from swarm.evaluation import eval_loss
from swarm.samples import Sample
from swarm.tokenizer import ByteTokenizer
from worker.donate import DonateConfig, donate
from worker.training import TrainingLimits

runner = CliRunner()
STEPS = 3


def chat_rows(count: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"what is {i} plus 1?"},
                          {"role": "assistant", "content": f"{i + 1}."}]} for i in range(count)]


@pytest.fixture()
def coordinator(tmp_path):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chat_rows(60)))
    config = CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False, dataset_dirs=(datasets,))
    with Coordinator(config) as running:
        yield running


def test_a_chat_run_launched_from_the_cli_trains_a_worker_on_masked_batches(coordinator, tmp_path, monkeypatch):
    launched = runner.invoke(app, ["launch", "-c", coordinator.address, "--operator-token-file",
                                   str(coordinator.operator_token_file), "--name", "chat", "--dataset", "chat.jsonl",
                                   "--data-format", "chat", "--packing", "--seq-len", "160", "--data-slices", "1",
                                   "--batch-size-per-step", "2", "--target-batch-size", "1000"])
    assert launched.exit_code == 0, launched.output
    assert "54 train / 6 eval" in launched.output

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = training_module.iterate_batches

    def recording(*args, **kwargs):
        assert kwargs.get("packing") is True  # the run's packing reaches the worker's batches
        for batch in real(*args, **kwargs):
            seen.append((batch[1], batch[2]))
            yield batch

    monkeypatch.setattr(training_module, "iterate_batches", recording)
    summary = donate(DonateConfig(coordinator=coordinator.address, run="chat", name="friend", device="cpu",
                                  identity=tmp_path / "friend.key", limits=TrainingLimits(max_steps=STEPS),
                                  show_progress=False, hand_over_timeout_s=0, drain_timeout_s=5))
    assert summary.steps == STEPS and math.isfinite(summary.last_loss)

    tokenizer = ByteTokenizer()
    assert len(seen) >= STEPS
    for input_ids, labels in seen:
        real_tokens = input_ids != tokenizer.pad_token_id
        masked = (labels == IGNORE_INDEX) & real_tokens
        trained = labels != IGNORE_INDEX
        assert masked.sum() > trained.sum() > 0  # the prompts (and template) outweigh the short answers
        answers = tokenizer.decode(labels[trained].tolist())
        assert "what is" not in answers and "<|user|>" not in answers and "<|end|>" in answers
        assert (real_tokens.sum(dim=1) > 100).all()  # packed: two 60-62-token samples a row

    runtime = coordinator.runs.get("chat")
    assert all(isinstance(sample, Sample) for sample in runtime.split.eval)
    with runtime.evaluation_model() as model:
        loss = eval_loss(model, runtime.split.eval, runtime.tokenizer, runtime.spec.seq_len)
        ids, labels = encode_batch(runtime.split.eval, runtime.tokenizer, runtime.spec.seq_len)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1]
    targets = labels[:, 1:]
    answers = targets != IGNORE_INDEX
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits[answers], targets[answers]).item(),
                                 rel=1e-4)
