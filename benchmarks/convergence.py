"""Convergence equivalence: the eval loss of a 3-worker swarm vs one process training the same LoRA with plain
PEFT and torch, with the same number of optimizer steps, the same optimizer and learning rate, the same LoRA
initialisation and the same train/eval split of the built-in ``sample`` dataset, on the ``tiny`` preset. The
reference is run with the run's target batch and with the batch the swarm really used per step (hivemind's
epochs overshoot the target; the swarm's samples per epoch are read from the ledger).

The swarm is the real thing (coordinator, ``swarm donate`` processes on this machine, hivemind averaging, the
coordinator's publish and eval). The single process draws its batches from the whole train split; the swarm's
workers each draw from their own slice of it, so the two see the same data distribution but not the very same
batches: the reference is given with several data orders to show the spread that alone causes.

    .venv/bin/python benchmarks/convergence.py                 # 3 workers, 12 epochs of 96 samples (~2.5 min)
    .venv/bin/python benchmarks/convergence.py --epochs 30 --workers 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from swarm.client import CoordinatorClient
from swarm.data import iterate_batches, load_texts, split_dataset
from swarm.evaluation import eval_loss
from swarm.local_swarm import LocalSwarm
from swarm.model import build_lora_model, load_base_model
from swarm.spec import RunSpec
from worker.shard_optimizers import torch_optimizer_factory

RUN = "convergence"
FAILED_ROUND = re.compile(r"Averaging gradients failed|Proceeding with local gradients|Averaging: received")


def run_swarm(args: argparse.Namespace, workdir: Path) -> dict:
    with LocalSwarm(workdir) as local:
        address = local.start_coordinator(["--no-publish"])
        launch = subprocess.run(
            [sys.executable, "-m", "nomoat_cli", "launch", "-c", address, "--operator-token-file",
             str(local.operator_token_file), "--name", RUN, "--base-model", "tiny",
             "--dataset", "sample", "--shards", "1", "--batch-size-per-step", str(args.batch), "--target-batch-size",
             str(args.target), "--lr", str(args.lr), "--data-slices", str(args.workers),
             "--averaging-matchmaking-time", "2", "--averaging-averaging-timeout", "20",
             "--averaging-progress-refresh-s", "0.5"],
            capture_output=True, text=True)
        if launch.returncode != 0:
            raise RuntimeError(launch.stdout + launch.stderr)
        started = time.monotonic()
        for index in range(args.workers):
            local.start_worker(address, RUN, index, ["--max-epochs", str(args.epochs), "--wait-for-peers",
                                                     str(args.workers), "--linger", "120"])
        while not all("samples per shard" in local.log(f"worker{i}.log") for i in range(args.workers)):
            if time.monotonic() - started > args.timeout or any(p.poll() not in (None,) for p in local.workers):
                raise RuntimeError("swarm did not finish; logs in " + str(workdir))
            time.sleep(0.5)
        wall = time.monotonic() - started
        with CoordinatorClient(local.operator_endpoint(address)) as client:
            published = client.publish_now(RUN)
            samples = client.status(RUN).runs[0].samples_trained
        if not published.published:
            raise RuntimeError(published.message)
        logs = [local.log(f"worker{i}.log") for i in range(args.workers)]
    return {"eval_loss": published.version.eval_loss, "base": published.version.base_eval_loss,
            "epoch": published.version.epoch, "samples": samples, "wall": wall,
            "failed_rounds": sum(len(FAILED_ROUND.findall(log)) for log in logs)}


def run_reference(args: argparse.Namespace, seed: int, batch: int) -> float:
    """Plain PEFT + torch: one process, ``epochs`` optimizer steps on batches of ``batch`` samples."""
    spec = RunSpec(name=RUN, batch_size_per_step=args.batch, target_batch_size=batch, lr=args.lr)
    torch.manual_seed(seed)
    base, tokenizer = load_base_model("tiny")
    model = build_lora_model(base, spec.lora, seed=spec.seed)
    model.train()
    optimizer = torch_optimizer_factory(spec)([p for p in model.parameters() if p.requires_grad])
    split = split_dataset(load_texts("sample"), spec.eval_fraction, spec.seed)
    batches = iterate_batches(split.train, tokenizer, spec.seq_len, batch, seed=seed)
    for _ in range(args.epochs):
        _, input_ids, labels = next(batches)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return eval_loss(model, split.eval, tokenizer, spec.seq_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12, help="optimizer steps (hivemind epochs)")
    parser.add_argument("--batch", type=int, default=8, help="samples per local step of a worker")
    parser.add_argument("--target", type=int, default=96, help="total batch per optimizer step")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=3, help="data orders of the single-process reference")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        swarm = run_swarm(args, Path(tmp))
    effective = round(swarm["samples"] / max(swarm["epoch"], 1))
    references = {batch: [run_reference(args, seed, batch) for seed in range(args.seeds)]
                  for batch in dict.fromkeys([args.target, effective])}
    print(f"tiny preset, LoRA rank 8 on all 7 Llama projections, adamw lr {args.lr}, target batch {args.target}, "
          f"{args.epochs} optimizer steps")
    print(f"{'setup':<44} {'eval loss':>9}  notes")
    print(f"{'base model (untrained LoRA)':<44} {swarm['base']:>9.4f}")
    print(f"{f'swarm, {args.workers} workers (published version)':<44} {swarm['eval_loss']:>9.4f}  "
          f"epoch {swarm['epoch']}, {swarm['samples']} samples trained ({effective}/step: hivemind's epochs "
          f"overshoot the target), {swarm['failed_rounds']} failed rounds, {swarm['wall']:.0f}s")
    for batch, losses in references.items():
        spread = statistics.pstdev(losses) if len(losses) > 1 else 0.0
        label = f"single process, PEFT + torch, batch {batch}"
        print(f"{label:<44} {statistics.mean(losses):>9.4f}  mean of {len(losses)} data orders: "
              f"{', '.join(f'{r:.4f}' for r in losses)} (std {spread:.4f}); {batch * args.epochs} samples")
        print(f"{'  difference swarm - single':<44} {swarm['eval_loss'] - statistics.mean(losses):>+9.4f}")

if __name__ == "__main__":
    from swarm.log import configure_logging

    configure_logging()
    main()
