"""Per-round averaging overhead on loopback: how long a worker is blocked per epoch (waiting for its group, the
all-reduce and the step) beyond its own compute, sync mode vs local mode, blocking and overlapped.

Two workers (threads of this process, each with its own DHT on 127.0.0.1) train one tensor of ``--params``
values with nomoat's own shard optimizers (``make_shard_optimizer``); a sleep of ``--step-s`` stands in for each
forward/backward pass. Every configuration runs side by side in one invocation (these machines are noisy).

    .venv/bin/python benchmarks/round_overhead.py                 # ~2 min here
    .venv/bin/python benchmarks/round_overhead.py --params 10000000 --epochs 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HIVEMIND_LOGLEVEL", "ERROR")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from swarm.dht import start_dht, visible_addresses  # noqa: E402
from swarm.identity import load_or_create_identity  # noqa: E402
from swarm.spec import AveragingSpec, RunSpec  # noqa: E402
from worker.shard_optimizers import make_shard_optimizer, wait_for_peers  # noqa: E402

WORKERS = 2
BATCH = 8

CONFIGS = {  # name -> AveragingSpec fields
    "sync (defaults)": dict(mode="sync"),
    "sync, matchmaking 1 s": dict(mode="sync", matchmaking_time=1.0),
    "local, blocking": dict(mode="local", overlap=False, matchmaking_time=1.0),
    "local, overlapped": dict(mode="local", overlap=True, matchmaking_time=1.0),
}


def run_config(name: str, fields: dict, args: argparse.Namespace) -> dict:
    spec = RunSpec(name=f"overhead{abs(hash(name)) % 10_000}", batch_size_per_step=BATCH, optimizer="adam",
                   lr=1e-4, target_batch_size=BATCH * args.steps_per_epoch * WORKERS,
                   averaging=AveragingSpec(progress_refresh_s=0.5, average_state_every=1000, **fields))
    # progress records count only when signed by the key of the peer they name (swarm.progress_filter)
    folder = tempfile.mkdtemp()
    identities = [load_or_create_identity(Path(folder) / f"worker{index}.key") for index in range(WORKERS)]
    dhts = [start_dht(identity_path=str(identities[0].path))]
    dhts.append(start_dht(visible_addresses(dhts[0]), identity_path=str(identities[1].path)))
    params = [torch.nn.Parameter(torch.zeros(args.params)) for _ in range(WORKERS)]
    optimizers = [make_shard_optimizer(spec, 0, [param], dht, identity.as_hivemind_key(), verbose=False)
                  for param, dht, identity in zip(params, dhts, identities)]
    results: list[dict] = [{} for _ in range(WORKERS)]

    def work(index: int) -> None:
        optimizer, param = optimizers[index], params[index]
        wait_for_peers(dhts[index], spec, [0], WORKERS, 60)
        blocked, started, rounds_from = 0.0, None, optimizer.local_epoch + 1  # the first epoch warms up
        while optimizer.local_epoch < rounds_from + args.epochs:
            if started is None and optimizer.local_epoch >= rounds_from:
                started, blocked = time.monotonic(), 0.0
            time.sleep(args.step_s)
            param.grad = torch.randn_like(param) * 1e-3
            t0 = time.monotonic()
            optimizer.accumulate()
            optimizer.zero_grad()
            if optimizer.epoch_is_due:
                optimizer.finish_epoch()
            blocked += time.monotonic() - t0
        optimizer.settle()
        assert started is not None
        results[index] = {"wall": time.monotonic() - started, "blocked": blocked}
        time.sleep(2.0)  # the peer's last round may still need this one

    threads = [threading.Thread(target=work, args=(index,)) for index in range(WORKERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.config_timeout)
    finally:
        for optimizer in optimizers:
            optimizer.shutdown()
        for dht in dhts:
            dht.shutdown()
    done = [result for result in results if result]
    rounds = [dict(getattr(optimizer.state_averager, "round_counts", {})) for optimizer in optimizers]
    return {"name": name, "ok": len(done), "rounds": rounds,
            "overhead": statistics.mean(r["blocked"] for r in done) / args.epochs if done else float("nan"),
            "epoch_s": statistics.mean(r["wall"] for r in done) / args.epochs if done else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=1_000_000, help="averaged values (4 MB in fp32)")
    parser.add_argument("--step-s", type=float, default=0.1, help="stand-in compute per local step")
    parser.add_argument("--steps-per-epoch", type=int, default=8, help="local steps per worker per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="measured epochs, after one warm-up epoch")
    parser.add_argument("--config-timeout", type=float, default=300.0)
    args = parser.parse_args()
    compute = args.step_s * args.steps_per_epoch
    print(f"{WORKERS} workers on loopback, {args.params * 4 / 1e6:.0f} MB fp32 averaged per round, "
          f"{compute:.1f} s of compute per epoch")
    print(f"{'configuration':<24} {'epoch s':>8} {'overhead s/round':>17} {'measured':>8}", flush=True)
    for name, fields in CONFIGS.items():
        row = run_config(name, fields, args)
        print(f"{name:<24} {row['epoch_s']:>8.2f} {row['overhead']:>17.2f} {row['ok']:>6}/{WORKERS}  {row['rounds'] if fields['mode'] == 'local' else ''}", flush=True)


if __name__ == "__main__":
    main()
