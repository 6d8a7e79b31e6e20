"""Convergence of sync and local (DiLoCo-style) training against a single process: eval loss on a held-out split
after the same number of training samples, for several seeds, on two corpora, with the ``tiny`` preset.

Every row trains the run's LoRA (rank 8 on all 7 Llama projections) on the built-in ``tiny`` model with the same
optimizer (adamw) and learning rate (``--lr``); within one seed every row starts from the same LoRA
initialisation (``RunSpec.seed`` = the seed). The train/eval split is fixed (seed 0, 10% held out), so every
row of every seed is scored on the same held-out texts (``swarm.evaluation.eval_loss``). With N workers
(``--workers``), b samples per local step (``--batch``) and S planned samples per row (``--samples``):

- ``single, batch b``: one process, plain PEFT + torch, one optimizer step per batch of b samples drawn from the
  whole train split, S / b steps.
- ``sync, T samples/step``: real ShardOptimizers (``mode="sync"``: hivemind averages the gradients of every
  epoch of T = ``--sync-target`` samples and all workers take the same step), N workers in threads of this
  process, each with its own DHT on loopback and its own slice of the train split, until S / T epochs. Scored:
  worker 0's LoRA (all workers hold the same; "spread" in the log is the largest difference between them).
  Reference: the single process with as many optimizer steps as the swarm took epochs, on batches of the
  swarm's mean samples per epoch (the same samples, the same steps, the same mean batch).
- ``local, H=h, outer LR/MOMENTUM, FACTORS``: the same swarm with ``mode="local"``: every worker takes an
  optimizer step every b samples and every epoch of T = N x b x h samples the group averages the change of the
  parameters and applies one outer Nesterov step (outer lr and momentum as given: ``1/0`` is plain parameter
  averaging; ``lora_factors`` as given; rounds overlapped with the next local steps unless "blocking"), until
  S / T rounds. Scored: the outer parameters the workers agree on after the last round has landed. Reference:
  the single process at batch b with as many steps as the swarm took local steps in all (the same samples, the
  same steps per sample). "one worker's steps alone": the same single process after only as many steps as one
  worker took: what a worker would reach without its peers.

hivemind's epochs overshoot the target on this tiny model (a local step takes ~20 ms, far less than the progress
tracker's refresh), so the swarm rows train some 5-25% more samples than planned, with more local steps per
round than h (column H): every reference is trained with the samples its row really trained ("samples" column),
seed by seed. A seed also fixes the data order: the single process draws with that seed, worker i of the swarm
with ``seed x 1000 + i`` from its own slice, so the swarm and the single process see the same data distribution
but not the very same batches. "vs reference" is the relative difference of the seed means.

Corpora: ``sample`` (the built-in generated stories) and ``langref``: the prose of the Python Language Reference
that CPython ships in its standard library (``pydoc_data.topics``, what ``help("if")`` prints), cut at word
boundaries into pieces that fit ``seq_len`` (deterministic for a Python version, no network).

    .venv/bin/python benchmarks/local_convergence.py --quick     # 1 seed, 2048 samples, both corpora (~4.5 min)
    .venv/bin/python benchmarks/local_convergence.py             # 3 seeds, 3072 samples, both corpora (~16 min)
    .venv/bin/python benchmarks/local_convergence.py --corpora sample --seeds 1 --sync-target 0 \
        --local 16:0.7:0.9:both,16:0.7:0.9:both:blocking,16:1.5:0:both     # other local rows
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from swarm.data import DatasetSplit, data_slice, iterate_batches, load_texts, split_dataset  # noqa: E402
from swarm.dht import start_dht, visible_addresses  # noqa: E402
from swarm.evaluation import eval_loss  # noqa: E402
from swarm.identity import load_or_create_identity  # noqa: E402
from swarm.spec import AveragingSpec, RunSpec  # noqa: E402
from worker.model_setup import RunModel, build_run_model  # noqa: E402
from worker.shard_optimizers import make_shard_optimizer, torch_optimizer_factory  # noqa: E402
from worker.training import TrainingLimits, TrainingLoop  # noqa: E402

SEQ_LEN = 64
# plain averaging of both factors at two H, and the run's defaults (DiLoCo's outer step, alternating factors)
DEFAULT_LOCAL = "4:1:0:both,16:1:0:both,16:0.7:0.9:alternate"
_HEADING = re.compile(r"[*=\-^~]{3,}")


def language_reference_texts(max_bytes: int = SEQ_LEN - 2) -> list[str]:
    """The prose paragraphs of the Python Language Reference shipped in ``pydoc_data.topics`` (code, grammar
    and tables left out), cut at word boundaries into pieces of at most ``max_bytes`` UTF-8 bytes, so that with
    BOS and EOS none is truncated."""
    from pydoc_data.topics import topics

    pieces = []
    for name in sorted(topics):
        for paragraph in topics[name].split("\n\n"):
            lines = paragraph.strip("\n").splitlines()
            if not lines or lines[0].startswith(" ") or any(
                    _HEADING.fullmatch(line.strip()) or line.lstrip().startswith(("|", "+-")) for line in lines):
                continue
            words = " ".join(line.strip() for line in lines).split()
            if len(words) < 4:
                continue
            piece = ""
            for word in words:
                longer = f"{piece} {word}" if piece else word
                if len(longer.encode()) <= max_bytes:
                    piece = longer
                    continue
                if piece:
                    pieces.append(piece)
                piece = word if len(word.encode()) <= max_bytes else ""
            if piece:
                pieces.append(piece)
    return pieces


CORPORA = {"sample": lambda: load_texts("sample"), "langref": language_reference_texts}


@dataclass(frozen=True)
class Setup:
    """How one row trains: alone ("single", on batches of ``target``) or as a swarm of ``sync`` or ``local``
    workers whose epochs are ``target`` samples."""

    label: str
    kind: str  # "single", "sync" or "local"
    target: int  # single: its batch; sync and local: the swarm's samples per epoch
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    lora_factors: str = "alternate"
    overlap: bool = True

    def spec(self, args: argparse.Namespace, seed: int) -> RunSpec:
        averaging = AveragingSpec(matchmaking_time=args.matchmaking_time, averaging_timeout=20.0,
                                  progress_refresh_s=args.progress_refresh,
                                  mode="local" if self.kind == "local" else "sync",
                                  outer_lr=self.outer_lr, outer_momentum=self.outer_momentum,
                                  lora_factors=self.lora_factors, overlap=self.overlap)
        return RunSpec(name="local-convergence", batch_size_per_step=args.batch if self.kind != "single" else
                       self.target, target_batch_size=self.target, lr=args.lr, seq_len=SEQ_LEN, seed=seed,
                       data_slices=args.workers, averaging=averaging)


@dataclass
class Outcome:
    eval_loss: float
    samples: int  # samples trained, all workers together
    epochs: int = 0  # the swarm's rounds (the lowest worker's epoch)
    spread: float = 0.0  # largest difference of a scored parameter between workers
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def train_single(spec: RunSpec, split: DatasetSplit, seed: int, checkpoints: list[int]) -> dict[int, float]:
    """Plain PEFT + torch in this thread, optimizer steps on batches of ``batch_size_per_step`` samples of the whole
    train split: the eval loss after each number of steps in ``checkpoints``."""
    run_model = build_run_model(spec)
    model = run_model.model
    model.train()
    optimizer = torch_optimizer_factory(spec)(run_model.shard_parameters(0))
    batches = iterate_batches(split.train, run_model.tokenizer, spec.seq_len, spec.batch_size_per_step, seed=seed)
    losses = {}
    for step in range(1, max(checkpoints) + 1):
        _, input_ids, labels = next(batches)
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step in checkpoints:
            losses[step] = eval_loss(model, split.eval, run_model.tokenizer, spec.seq_len)
    return losses


def scored_parameters(run_model: RunModel, optimizer) -> list[torch.Tensor]:
    """What a worker holds in common with its group: the outer parameters in local mode, else its LoRA."""
    shared = optimizer.outer_parameters() if hasattr(optimizer, "outer_parameters") else \
        run_model.shard_parameters(0)
    return [tensor.detach().clone() for tensor in shared]


def train_swarm(spec: RunSpec, split: DatasetSplit, samples: int, seed: int, workers: int, folder: Path,
                timeout_s: float) -> Outcome:
    """``workers`` ShardOptimizers in threads of this process, each with its own DHT, until the swarm has done
    ``samples / target_batch_size`` epochs; scored on worker 0's shared parameters."""
    started = time.monotonic()
    epochs = samples // spec.target_batch_size
    keys = Path(tempfile.mkdtemp(dir=folder))  # fresh peer IDs for every row
    identities = [load_or_create_identity(keys / f"worker{i}.key") for i in range(workers)]
    dhts = [start_dht(identity_path=str(identities[0].path))]
    dhts += [start_dht(visible_addresses(dhts[0]), identity_path=str(identity.path)) for identity in identities[1:]]
    models = [build_run_model(spec) for _ in range(workers)]
    optimizers = []
    try:
        for model, dht, identity in zip(models, dhts, identities):
            optimizers.append(make_shard_optimizer(spec, 0, model.shard_parameters(0), dht,
                                                   identity.as_hivemind_key(), verbose=False,
                                                   param_names=model.shard_names[0]))
        loops = [TrainingLoop(spec, model, {0: optimizer}, data_slice(split.train, workers, i), torch.device("cpu"),
                              show_progress=False, data_seed=seed * 1000 + i, sync_peers=workers,
                              sync_timeout_s=60.0)
                 for i, (model, optimizer) in enumerate(zip(models, optimizers))]
        summaries: list = [None] * workers

        def train(index: int) -> None:
            summaries[index] = loops[index].run(TrainingLimits(max_epochs=epochs, max_seconds=timeout_s))

        threads = [threading.Thread(target=train, args=(i,), daemon=True) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if spec.averaging.mode == "local":
            for optimizer in optimizers:  # the last round, overlapped with nothing, lands
                optimizer.state_averager.step(wait_for_delayed_updates=True)
        scored = [scored_parameters(model, optimizer) for model, optimizer in zip(models, optimizers)]
        spread = max((float((a - b).abs().max()) for other in scored[1:] for a, b in zip(scored[0], other)),
                     default=0.0)
        with torch.no_grad():
            for param, value in zip(models[0].shard_parameters(0), scored[0]):
                param.copy_(value)
        notes = [f"worker {i} stopped by {summary.stopped_by if summary else 'an error'}"
                 for i, summary in enumerate(summaries) if summary is None or summary.stopped_by != "max_epochs"]
        counts = getattr(optimizers[0].state_averager, "round_counts", None)
        if counts:
            notes.append("rounds " + ", ".join(f"{name} {count}" for name, count in sorted(counts.items()) if count))
        return Outcome(eval_loss(models[0].model, split.eval, models[0].tokenizer, spec.seq_len),
                       samples=sum(summary.samples for summary in summaries if summary is not None),
                       epochs=min(optimizer.local_epoch for optimizer in optimizers), spread=spread,
                       seconds=time.monotonic() - started, notes=notes)
    finally:
        for optimizer in optimizers:
            optimizer.shutdown()
        for dht in dhts:
            dht.shutdown()


def swarm_setups(args: argparse.Namespace) -> list[Setup]:
    rows = [Setup(f"sync, {args.sync_target} samples/step", "sync", args.sync_target)] if args.sync_target else []
    for h, outer_lr, momentum, factors, overlap in args.local:
        rows.append(Setup(f"local, H={h}, outer {outer_lr:g}/{momentum:g}, {factors}{'' if overlap else ', blocking'}",
                          "local", args.workers * args.batch * h, outer_lr, momentum, factors, overlap))
    return rows


@dataclass
class Row:
    """One swarm row of one seed with its single-process reference at the same number of samples; for a local
    row also the single process after only as many steps as one worker took (what training alone would give)."""

    outcome: Outcome
    reference: float
    reference_label: str
    one_worker: float | None = None


def run_seed(args: argparse.Namespace, corpus: str, split: DatasetSplit, seed: int, folder: Path,
             clock: float) -> tuple[dict[str, Row], dict[int, float]]:
    """The swarm rows of one seed, then their references; also the single process at batch b after each
    number of samples it was checked at."""
    rows: dict[str, Outcome] = {}
    for setup in swarm_setups(args):
        outcome = train_swarm(setup.spec(args, seed), split, args.samples, seed, args.workers, folder, args.timeout)
        rows[setup.label] = outcome
        print(f"[{time.monotonic() - clock:5.0f}s] {corpus} seed {seed} {setup.label}: eval {outcome.eval_loss:.4f}, "
              f"{outcome.samples} samples, {outcome.epochs} rounds, spread {outcome.spread:.1e}, "
              f"{outcome.seconds:.0f}s {'; '.join(outcome.notes)}", flush=True)
    single = Setup("single", "single", args.batch).spec(args, seed)
    local = [outcome for label, outcome in rows.items() if label.startswith("local")]
    needed = {args.samples // args.batch} | {steps for outcome in local for steps in (
        outcome.samples // args.batch, outcome.samples // (args.batch * args.workers))}
    along = train_single(single, split, seed, sorted(needed))
    matched = {}
    for label, outcome in rows.items():
        if label.startswith("local"):
            matched[label] = Row(outcome, along[outcome.samples // args.batch], f"single, batch {args.batch}",
                                 along[outcome.samples // (args.batch * args.workers)])
        else:  # the same number of optimizer steps on the batch the swarm averaged per step, on average
            batch = max(1, round(outcome.samples / max(outcome.epochs, 1)))
            spec = Setup("single", "single", batch).spec(args, seed)
            loss = train_single(spec, split, seed, [max(outcome.epochs, 1)])[max(outcome.epochs, 1)]
            matched[label] = Row(outcome, loss, f"single, batch {batch}")
    print(f"[{time.monotonic() - clock:5.0f}s] {corpus} seed {seed} references: " + ", ".join(
        f"{label}: {row.reference:.4f}" for label, row in matched.items()), flush=True)
    return matched, along


def parse_local(text: str) -> list[tuple[int, float, float, str, bool]]:
    """'H:OUTER_LR:MOMENTUM:FACTORS[:blocking],...' -> [(H, outer_lr, outer_momentum, lora_factors, overlap)]"""
    rows = []
    for item in filter(None, text.split(",")):
        h, outer_lr, momentum, factors, *rest = item.split(":")
        if rest not in ([], ["overlap"], ["blocking"]):
            raise ValueError(f"{item!r}: the fifth field, when given, is 'overlap' or 'blocking'")
        rows.append((int(h), float(outer_lr), float(momentum), factors, rest != ["blocking"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed and 2048 samples per row")
    parser.add_argument("--corpora", default="sample,langref", help=f"comma-separated: {', '.join(CORPORA)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="samples per local step (batch_size_per_step)")
    parser.add_argument("--samples", type=int, default=3072, help="training samples of every row (planned)")
    parser.add_argument("--sync-target", type=int, default=128, help="sync row's samples per step (0: no sync row)")
    parser.add_argument("--local", default=DEFAULT_LOCAL, help="local rows, comma-separated H:OUTER_LR:MOMENTUM:"
                        "FACTORS[:blocking] (H local steps per round, outer Nesterov lr and momentum, "
                        "lora_factors; 'blocking': overlap=False, each round waits for its all-reduce)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--matchmaking-time", type=float, default=0.5)
    parser.add_argument("--progress-refresh", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=600, help="seconds one swarm row may take")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.samples = 1, 2048
    args.local = parse_local(args.local)
    torch.set_num_threads(1)
    for setup in swarm_setups(args):
        if args.samples % setup.target:
            parser.error(f"--samples {args.samples} is not a multiple of {setup.label}'s {setup.target} per round")
    clock = time.monotonic()
    results: dict[str, dict[str, list[Row]]] = {}
    nominal: dict[str, list[float]] = {}
    base: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in args.corpora.split(","):
            split = split_dataset(CORPORA[corpus](), eval_fraction=0.1, seed=0)
            untrained = build_run_model(Setup("base", "single", args.batch).spec(args, 0))
            base[corpus] = eval_loss(untrained.model, split.eval, untrained.tokenizer, SEQ_LEN)
            for seed in range(args.seeds):
                matched, along = run_seed(args, corpus, split, seed, Path(tmp), clock)
                for label, row in matched.items():
                    results.setdefault(corpus, {}).setdefault(label, []).append(row)
                nominal.setdefault(corpus, []).append(along[args.samples // args.batch])
    print_table(args, results, nominal, base, time.monotonic() - clock)


def print_table(args: argparse.Namespace, results: dict[str, dict[str, list[Row]]], nominal: dict[str, list[float]],
                base: dict[str, float], seconds: float) -> None:
    print(f"\ntiny preset, LoRA rank 8 (7 projections), adamw lr {args.lr:g}, {args.samples} samples per row "
          f"(planned), {args.workers} workers x {args.batch} samples per local step, {args.seeds} seed(s), "
          f"{seconds / 60:.1f} min\n")
    print("| corpus | row | samples | rounds | H | eval loss | reference | vs reference | one worker's steps alone | "
          "per seed (row / reference) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for corpus, rows in results.items():
        print(f"| {corpus} | base model (LoRA untrained) | 0 | | | {base[corpus]:.4f} | | | | |")
        print(f"| {corpus} | single, batch {args.batch} | {args.samples} | | | {statistics.mean(nominal[corpus]):.4f} "
              f"| | | | {', '.join(f'{loss:.4f}' for loss in nominal[corpus])} |")
        for label, seeds in rows.items():
            mean = statistics.mean(row.outcome.eval_loss for row in seeds)
            reference = statistics.mean(row.reference for row in seeds)
            samples = statistics.mean(row.outcome.samples for row in seeds)
            rounds = statistics.mean(row.outcome.epochs for row in seeds)
            local_steps = samples / (args.workers * args.batch * rounds) if label.startswith("local") else None
            alone = [row.one_worker for row in seeds if row.one_worker is not None]
            per_seed = ", ".join(f"{row.outcome.eval_loss:.4f} / {row.reference:.4f}" for row in seeds)
            print(f"| {corpus} | {label} | {samples:.0f} | {rounds:.0f} | "
                  f"{f'{local_steps:.1f}' if local_steps else ''} | {mean:.4f} | {reference:.4f} "
                  f"({seeds[0].reference_label}) | {100 * (mean - reference) / reference:+.2f}% | "
                  f"{f'{statistics.mean(alone):.4f}' if alone else ''} | {per_seed} |")


if __name__ == "__main__":
    from swarm.log import configure_logging

    configure_logging(os.environ.get("NOMOAT_LOGLEVEL", "WARNING"))
    main()
