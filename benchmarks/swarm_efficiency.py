"""Swarm efficiency: the share of each worker's wall time spent computing vs waiting on averaging, for LoRA
payloads of realistic size, with 1, 2 and 4 workers on links capped at 10, 50 and 200 Mbit/s.

Every worker runs in its own network namespace (tests/netns.py) behind a tbf cap, with nomoat's own shard
optimizer (``worker.shard_optimizers.make_shard_optimizer``: hivemind.Optimizer, synchronous gradient
averaging, fp32 gradients as nomoat sends them) over a tensor of exactly the LoRA's parameter count. The forward
and backward pass is stood in for by a calibrated compute delay, so the communication is real but the
machine's two cores are not what is measured:

    compute per local epoch = tokens per worker per epoch x 4 x base-model parameters / GPU FLOP/s
    (LoRA fine-tuning: forward 2N + backward of activations 2N, no base weight gradients;
     defaults: 64 sequences x 512 tokens, 100 TFLOP/s effective, i.e. one A100-class GPU)

Every worker computes the same per epoch (weak scaling: the swarm's target batch grows with the workers).
Needs root (network namespaces). Prints one row per configuration.

    .venv/bin/python benchmarks/swarm_efficiency.py --quick     # 1B Llama q,v LoRA, 1/2/4 workers x 10/50/200
    .venv/bin/python benchmarks/swarm_efficiency.py --payloads llama-8b-qv --workers 2 --caps 50
    .venv/bin/python benchmarks/swarm_efficiency.py             # all payloads (long: the 8B all-module LoRA
                                                                # is 168 MB per round)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@dataclass(frozen=True)
class Payload:
    """A LoRA at rank 16 on a Llama architecture: its trainable parameter count and the base model's size."""

    name: str
    lora_params: int
    base_params: float

    @property
    def megabytes(self) -> float:
        return self.lora_params * 4 / 1e6


def lora_params(hidden: int, kv: int, inter: int, layers: int, modules: tuple[str, ...], rank: int = 16) -> int:
    dims = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    return layers * sum(rank * (dims[m][0] + dims[m][1]) for m in modules)


QV = ("q_proj", "v_proj")  # PEFT's default targets for Llama
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # nomoat's default
# Llama-3.2-1B: hidden 2048, 8 KV heads x 64, MLP 8192, 16 layers; Llama-3.1-8B: 4096, 8 x 128, 14336, 32
PAYLOADS = {
    "llama-1b-qv": Payload("llama-1b-qv", lora_params(2048, 512, 8192, 16, QV), 1.24e9),
    "llama-1b-all": Payload("llama-1b-all", lora_params(2048, 512, 8192, 16, ALL), 1.24e9),
    "llama-8b-qv": Payload("llama-8b-qv", lora_params(4096, 1024, 14336, 32, QV), 8.03e9),
    "llama-8b-all": Payload("llama-8b-all", lora_params(4096, 1024, 14336, 32, ALL), 8.03e9),
}
STEPS_PER_EPOCH = 8
BATCH = 8


def compute_seconds_per_epoch(payload: Payload, tokens: int, flops: float) -> float:
    return tokens * 4 * payload.base_params / flops


# ---------------------------------------------------------------- one worker (runs inside its namespace)

def worker_main(args: argparse.Namespace) -> None:
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")
    import torch
    from hivemind.utils.crypto import RSAPrivateKey

    from swarm.dht import start_dht, visible_addresses
    from swarm.spec import AveragingSpec, RunSpec
    from worker.shard_optimizers import make_shard_optimizer, wait_for_peers

    initial = []
    if args.index > 0:
        peers_file = Path(args.peers_file)
        deadline = time.monotonic() + 60
        while not peers_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        initial = json.loads(peers_file.read_text())
    dht = start_dht(initial, host=args.host)
    if args.index == 0:
        Path(args.peers_file + ".tmp").write_text(json.dumps(visible_addresses(dht)))
        os.replace(args.peers_file + ".tmp", args.peers_file)
    spec = RunSpec(name="bench", batch_size_per_step=BATCH, target_batch_size=BATCH * STEPS_PER_EPOCH * args.workers,
                   optimizer="adam", lr=1e-4,
                   averaging=AveragingSpec(matchmaking_time=args.matchmaking_time, averaging_timeout=args.timeout,
                                           progress_refresh_s=0.5, average_state_every=1000))
    param = torch.nn.Parameter(torch.zeros(args.lora_params))
    # a throwaway signing key: this benchmark needs no progress record bound to a peer ID
    optimizer = make_shard_optimizer(spec, 0, [param], dht, RSAPrivateKey(), verbose=False)
    try:
        wait_for_peers(dht, spec, [0], args.workers, 120)
        step_compute = args.compute_per_epoch / STEPS_PER_EPOCH
        compute = waiting = 0.0
        measuring_from, started = args.warmup_epochs, None
        synced = False
        while optimizer.local_epoch < args.warmup_epochs + args.epochs:
            measuring = optimizer.local_epoch >= measuring_from
            if measuring and started is None:
                started = time.monotonic()
            t0 = time.monotonic()
            time.sleep(step_compute)  # the forward/backward pass of a real worker
            param.grad = torch.randn_like(param)
            t1 = time.monotonic()
            optimizer.accumulate()
            if optimizer.epoch_is_due:
                optimizer.finish_epoch()
            t2 = time.monotonic()
            if not synced and args.workers > 1:  # as TrainingLoop does: one step each, then wait for all
                deadline = time.monotonic() + 60
                while optimizer.tracker.global_progress.num_peers < args.workers and time.monotonic() < deadline:
                    time.sleep(0.1)
                synced = True
            if measuring:
                compute += t1 - t0
                waiting += t2 - t1
        wall = time.monotonic() - started
        Path(args.result).write_text(json.dumps({"wall": wall, "compute": compute, "waiting": waiting,
                                                 "epoch": optimizer.local_epoch}))
        time.sleep(2.0)  # let the peers finish the last round before this one leaves
    finally:
        optimizer.shutdown()
        dht.shutdown()


# ---------------------------------------------------------------- the driver

def run_config(payload: Payload, workers: int, cap: float | None, args: argparse.Namespace) -> dict:
    from netns import Network

    compute = compute_seconds_per_epoch(payload, args.tokens, args.flops)
    with Network(tag="eff") as net, tempfile.TemporaryDirectory() as tmp:
        hosts = [net.add_host(f"w{i}", rate_mbit=cap) for i in range(workers)]
        peers_file = str(Path(tmp) / "peers.json")
        processes = []
        for index, host in enumerate(hosts):
            command = host.command(sys.executable, str(Path(__file__).resolve()), "_worker", "--index", str(index),
                                   "--host", host.address, "--workers", str(workers), "--peers-file", peers_file,
                                   "--lora-params", str(payload.lora_params), "--compute-per-epoch", str(compute),
                                   "--epochs", str(args.epochs), "--warmup-epochs", "1",
                                   "--matchmaking-time", str(args.matchmaking_time), "--timeout", str(args.timeout),
                                   "--result", str(Path(tmp) / f"r{index}.json"))
            log = open(Path(tmp) / f"w{index}.log", "wb")
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}))
        # a worker that fell out of sync keeps trying to download the state from peers that have left: once
        # one worker has its figures, the others get a grace period, then are stopped (and counted as missing)
        deadline = time.monotonic() + args.config_timeout
        results_dir = Path(tmp)
        while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
            if any(results_dir.glob("r*.json")):
                deadline = min(deadline, time.monotonic() + args.grace)
            time.sleep(0.5)
        for process in processes:
            if process.poll() is None:
                process.kill()  # ip netns exec has exec'd python; Network.close reaps its children
                process.wait()
        results = []
        for index in range(workers):
            path = Path(tmp) / f"r{index}.json"
            if path.exists():
                results.append(json.loads(path.read_text()))
            else:
                tail = (Path(tmp) / f"w{index}.log").read_text(errors="replace")[-1500:]
                print(f"  worker {index} produced no result; log tail:\n{tail}", file=sys.stderr)
    if not results:
        return {"payload": payload.name, "workers": workers, "cap": cap, "ok": 0}
    fractions = [r["compute"] / r["wall"] for r in results]
    waits = [r["waiting"] / r["wall"] for r in results]
    per_epoch = [r["wall"] / args.epochs for r in results]
    return {"payload": payload.name, "mb": payload.megabytes, "workers": workers, "cap": cap, "ok": len(results),
            "compute_s": compute, "compute_frac": statistics.mean(fractions), "wait_frac": statistics.mean(waits),
            "epoch_s": statistics.mean(per_epoch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="llama-1b-qv only (a few minutes)")
    parser.add_argument("--payloads", default="", help="comma-separated: " + ", ".join(PAYLOADS))
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--caps", default="10,50,200", help="Mbit/s per host, comma-separated")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs (after one warm-up epoch)")
    parser.add_argument("--tokens", type=int, default=64 * 512, help="tokens each worker processes per epoch")
    parser.add_argument("--flops", type=float, default=100e12, help="effective FLOP/s of the stand-in GPU")
    parser.add_argument("--matchmaking-time", type=float, default=3.0, help="nomoat's default")
    parser.add_argument("--timeout", type=float, default=300.0, help="averaging timeout (s)")
    parser.add_argument("--config-timeout", type=float, default=600.0)
    parser.add_argument("--grace", type=float, default=60.0, help="wait for stragglers after the first result")
    args = parser.parse_args()
    names = args.payloads.split(",") if args.payloads else (["llama-1b-qv"] if args.quick else list(PAYLOADS))
    print(f"{'payload':<13} {'MB/round':>8} {'workers':>7} {'cap Mbit/s':>10} {'compute s/epoch':>15} "
          f"{'epoch s':>8} {'computing':>9} {'averaging':>9} {'measured':>8}", flush=True)
    for name in names:
        payload = PAYLOADS[name]
        for workers in [int(w) for w in args.workers.split(",")]:
            caps = [None] if workers == 1 else [float(c) for c in args.caps.split(",")]
            for cap in caps:
                row = run_config(payload, workers, cap, args)
                if not row["ok"]:
                    print(f"{name:<13} {payload.megabytes:>8.1f} {workers:>7} {cap or '-':>10}  failed", flush=True)
                    continue
                print(f"{name:<13} {row['mb']:>8.1f} {workers:>7} {cap if cap else '-':>10} "
                      f"{row['compute_s']:>15.2f} {row['epoch_s']:>8.2f} {row['compute_frac']:>9.0%} "
                      f"{row['wait_frac']:>9.0%} {row['ok']:>6}/{workers}", flush=True)


def _worker_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for flag, kind in (("--index", int), ("--host", str), ("--workers", int), ("--peers-file", str),
                       ("--lora-params", int), ("--compute-per-epoch", float), ("--epochs", int),
                       ("--warmup-epochs", int), ("--matchmaking-time", float), ("--timeout", float),
                       ("--result", str)):
        parser.add_argument(flag, type=kind, required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    from swarm.log import configure_logging

    configure_logging()
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(_worker_args(sys.argv[2:]))
    else:
        main()
