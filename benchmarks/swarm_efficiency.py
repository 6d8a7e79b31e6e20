"""Swarm efficiency: the share of each worker's wall time spent computing vs waiting on averaging, and the bytes
it sends, for LoRA payloads of realistic size, with 1, 2 and 4 workers on links capped at 10, 50 and 200 Mbit/s,
in sync mode and in local (DiLoCo) mode.

Every worker runs in its own network namespace (tests/netns.py) behind a tbf cap, with nomoat's own shard
optimizer (``worker.shard_optimizers.make_shard_optimizer``) over a tensor of exactly the LoRA's parameter count:

- ``sync``: a synchronous gradient round every 8 microbatches of every worker (fp32 by default, as nomoat's
  default RunSpec sends them);
- ``local``: every worker steps its own optimizer on each microbatch and every H microbatches (``--local-steps``)
  the group averages the parameters' change and applies the outer Nesterov step (fp16 by default), with the
  round blocking or overlapped with the next H steps (``--overlap``).

The forward and backward pass is stood in for by a calibrated compute delay, so the communication is real but
the machine's cores are not what is measured:

    compute per step = tokens per step x 4 x base-model parameters / GPU FLOP/s
    (LoRA fine-tuning: forward 2N + backward of activations 2N, no base weight gradients; defaults: 8 sequences
     x 512 tokens per step, 100 TFLOP/s effective, i.e. one A100-class GPU: 0.20 s for a 1B, 1.32 s for an 8B)

A sync round computes 8 steps, a local round H. A step's ``accumulate()`` (gradient accumulation, or local mode's
optimizer step) runs inside the step's time and the delay sleeps the rest; the inner optimizer is SGD by default
(``--optimizer``): Adam over 42 M values takes 0.4 s on these CPUs, milliseconds on the GPU being stood in for.
"computing" is the nominal compute of the steps a worker took over its wall time; "sent" is what left the
worker's namespace (its link's tx_bytes: the all-reduce, the DHT and TCP/IP headers), per round and per million
tokens the worker trained. Every worker computes the same per round (weak scaling: the swarm's target batch
grows with the workers). Needs root (network namespaces). Prints one row per configuration.

    .venv/bin/python benchmarks/swarm_efficiency.py --quick     # 1B q,v LoRA, sync and local H=16, 1/2/4 x 10/50/200
    .venv/bin/python benchmarks/swarm_efficiency.py --payloads llama-8b-qv --workers 2 --caps 50 --modes sync
    .venv/bin/python benchmarks/swarm_efficiency.py --payloads llama-8b-all --workers 4 --caps 10 --modes local \
        --local-steps 64 --overlap on --compression fp16,8bit   # the 8B all-module LoRA: 168 MB fp32 per round
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
from collections import Counter
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
STEPS_PER_EPOCH = 8  # sync mode: microbatches per worker per round
BATCH = 8  # sequences per microbatch
DEFAULT_COMPRESSION = {"sync": "none", "local": "fp16"}


def compute_seconds_per_epoch(payload: Payload, tokens: int, flops: float) -> float:
    return tokens * 4 * payload.base_params / flops


# ---------------------------------------------------------------- one worker (runs inside its namespace)

def tx_bytes(iface: str) -> int:
    """Bytes this namespace has sent on ``iface`` (the host's only link: every peer-to-peer byte crosses it)."""
    return int(Path(f"/sys/class/net/{iface}/statistics/tx_bytes").read_text())


def worker_main(args: argparse.Namespace) -> None:
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")
    import torch

    from swarm.dht import start_dht, visible_addresses
    from swarm.identity import load_or_create_identity
    from swarm.spec import AveragingSpec, RunSpec
    from worker.shard_optimizers import make_shard_optimizer, wait_for_peers

    initial = []
    if args.index > 0:
        peers_file = Path(args.peers_file)
        deadline = time.monotonic() + 60
        while not peers_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        initial = json.loads(peers_file.read_text())
    # progress records count only when signed by the peer they name: the DHT's identity signs them
    identity = load_or_create_identity(Path(args.peers_file).with_name(f"w{args.index}.key"))
    dht = start_dht(initial, host=args.host, identity_path=str(identity.path))
    if args.index == 0:
        Path(args.peers_file + ".tmp").write_text(json.dumps(visible_addresses(dht)))
        os.replace(args.peers_file + ".tmp", args.peers_file)
    averaging = AveragingSpec(matchmaking_time=args.matchmaking_time, averaging_timeout=args.timeout,
                              progress_refresh_s=0.5, average_state_every=1000, mode=args.mode,
                              compression=args.compression, overlap=bool(args.overlap), link_mbit=args.link_mbit)
    # one round every steps_per_round microbatches of every worker: sync's epoch, or local mode's H
    spec = RunSpec(name="bench", batch_size_per_step=BATCH,
                   target_batch_size=BATCH * args.steps_per_round * args.workers, optimizer=args.optimizer, lr=1e-4,
                   averaging=averaging)
    param = torch.nn.Parameter(torch.zeros(args.lora_params))
    # one gradient for every step (never written to: the optimizers only read it): a fresh randn, or a copy, of
    # up to 42 M values per step would cost the shared cores more than the optimizer step, and what is averaged
    # does not change what a round costs
    gradient = torch.randn(args.lora_params) * 1e-3
    optimizer = make_shard_optimizer(spec, 0, [param], dht, identity.as_hivemind_key(),
                                     verbose=bool(os.environ.get("BENCH_VERBOSE")))
    try:
        wait_for_peers(dht, spec, [0], args.workers, 120)
        stepping = waiting = 0.0
        steps = 0
        started = sent = None
        synced = False
        while optimizer.local_epoch < args.warmup_epochs + args.epochs:
            measuring = optimizer.local_epoch >= args.warmup_epochs
            if measuring and started is None:
                started, sent = time.monotonic(), tx_bytes(args.iface)
            t0 = time.monotonic()
            param.grad = gradient
            optimizer.accumulate()  # sync: add to the round's gradients; local: the local optimizer step
            t1 = time.monotonic()
            # the rest of the step is the forward/backward pass of a real worker; a step whose accumulate took
            # longer than the whole step (a busy CPU) overruns, and that time counts against "computing"
            time.sleep(max(0.0, args.step_compute - (t1 - t0)))
            t2 = time.monotonic()
            if optimizer.epoch_is_due:
                optimizer.finish_epoch()  # sync and blocking local: the round; overlapped local: starts it
            t3 = time.monotonic()
            if not synced and args.workers > 1:  # as TrainingLoop does: one step each, then wait for all
                deadline = time.monotonic() + 60
                while optimizer.tracker.global_progress.num_peers < args.workers and time.monotonic() < deadline:
                    time.sleep(0.1)
                synced = True
            if measuring:
                stepping += t1 - t0
                waiting += t3 - t2
                steps += 1
        assert started is not None and sent is not None  # at least one measured step
        wall = time.monotonic() - started
        Path(args.result).write_text(json.dumps({
            "wall": wall, "compute": steps * args.step_compute, "stepping": stepping, "waiting": waiting,
            "steps": steps, "sent": tx_bytes(args.iface) - sent, "epoch": optimizer.local_epoch,
            "rounds": dict(getattr(optimizer.state_averager, "round_counts", {}))}))
        time.sleep(2.0)  # let the peers finish the last round before this one leaves
    finally:
        optimizer.shutdown()
        dht.shutdown()


# ---------------------------------------------------------------- the driver

@dataclass(frozen=True)
class Averaging:
    """How a row averages: sync (a gradient round every STEPS_PER_EPOCH steps) or local (a round of the
    parameters' change every ``steps`` local steps, blocking or overlapped with the next ones)."""

    mode: str
    steps: int
    overlap: bool
    compression: str

    @property
    def label(self) -> str:
        return "-" if self.mode == "sync" else ("on" if self.overlap else "off")


def averaging_rows(args: argparse.Namespace) -> list[Averaging]:
    """The averaging settings of every row, in order: sync, then local by H, overlapped first."""
    overlaps = {"both": [True, False], "on": [True], "off": [False]}[args.overlap]
    rows = []
    for mode in args.modes.split(","):
        compressions = args.compression.split(",") if args.compression else [DEFAULT_COMPRESSION[mode]]
        for compression in compressions:
            if mode == "sync":
                if compression == "8bit":
                    print("  sync mode has no 8bit compression (AveragingSpec): skipped", file=sys.stderr)
                    continue
                rows.append(Averaging("sync", STEPS_PER_EPOCH, False, compression))
            else:
                rows += [Averaging("local", int(h), overlap, compression)
                         for h in args.local_steps.split(",") for overlap in overlaps]
    return rows


def run_config(payload: Payload, workers: int, cap: float | None, averaging: Averaging,
               args: argparse.Namespace) -> dict:
    from netns import Network

    step_compute = compute_seconds_per_epoch(payload, args.tokens, args.flops) / STEPS_PER_EPOCH
    row = {"payload": payload.name, "mb": payload.megabytes, "workers": workers, "cap": cap, "averaging": averaging,
           "compute_s": step_compute * averaging.steps, "ok": 0}
    with Network(tag="eff") as net, tempfile.TemporaryDirectory() as tmp:
        hosts = [net.add_host(f"w{i}", rate_mbit=cap) for i in range(workers)]
        peers_file = str(Path(tmp) / "peers.json")
        processes = []
        for index, host in enumerate(hosts):
            command = host.command(
                sys.executable, str(Path(__file__).resolve()), "_worker", "--index", str(index),
                "--host", host.address, "--iface", host.iface, "--workers", str(workers),
                "--peers-file", peers_file,
                "--lora-params", str(payload.lora_params), "--step-compute", str(step_compute),
                "--steps-per-round", str(averaging.steps), "--mode", averaging.mode,
                "--overlap", str(int(averaging.overlap)), "--compression", averaging.compression,
                "--link-mbit", str(cap or 1000.0), "--optimizer", args.optimizer, "--epochs", str(args.epochs),
                "--warmup-epochs", str(args.warmup_epochs), "--matchmaking-time", str(args.matchmaking_time),
                "--timeout", str(args.timeout), "--result", str(Path(tmp) / f"r{index}.json"))
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
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for index in range(workers):
                name = f"{payload.name}-{workers}w-{cap}-{averaging.mode}{averaging.steps}-{averaging.label}-w{index}"
                (args.logs / f"{name}.log").write_bytes((Path(tmp) / f"w{index}.log").read_bytes())
    if not results:
        return row
    tokens_per_step = args.tokens / STEPS_PER_EPOCH
    return {**row, "ok": len(results),
            "compute_frac": statistics.mean(r["compute"] / r["wall"] for r in results),
            "step_frac": statistics.mean(r["stepping"] / r["wall"] for r in results),
            "wait_frac": statistics.mean(r["waiting"] / r["wall"] for r in results),
            "round_s": statistics.mean(r["wall"] / args.epochs for r in results),
            # the swarm's round falls due at workers x H steps in all: a worker that sees the others' progress
            # late takes more than H
            "steps_round": statistics.mean(r["steps"] / args.epochs for r in results),
            "sent_mb_round": statistics.mean(r["sent"] / 1e6 / args.epochs for r in results),
            # bytes per token is MB per million tokens
            "mb_per_mtok": statistics.mean(r["sent"] / (r["steps"] * tokens_per_step) for r in results),
            # local mode: how every worker's rounds ended, warm-up and the one in flight at the end included
            "rounds": sum((Counter(r["rounds"]) for r in results), Counter()),
            "load": os.getloadavg()[0]}  # the machine's, other work included: the CPU the workers had to share


COLUMNS = ("payload", "MB/round", "workers", "cap Mbit/s", "mode", "H", "overlap", "compress", "compute s/round",
           "steps/round", "round s", "computing", "step", "averaging", "sent MB/round", "MB/Mtok", "measured", "load",
           "rounds")


def format_row(row: dict) -> str:
    """One row of the table, in the order of COLUMNS, ' | '-separated (a Markdown table without its borders)."""
    averaging = row["averaging"]
    cells = [row["payload"], f"{row['mb']:.1f}", str(row["workers"]), f"{row['cap']:g}" if row["cap"] else "-",
             averaging.mode, str(averaging.steps), averaging.label,
             averaging.compression, f"{row['compute_s']:.2f}"]
    if not row["ok"]:
        return " | ".join(cells + ["failed"])
    rounds = ", ".join(f"{outcome} {count}" for outcome, count in sorted(row["rounds"].items())) or "-"
    cells += [f"{row['steps_round']:.1f}", f"{row['round_s']:.2f}", f"{row['compute_frac']:.0%}",
              f"{row['step_frac']:.0%}", f"{row['wait_frac']:.0%}", f"{row['sent_mb_round']:.1f}",
              f"{row['mb_per_mtok']:.0f}", f"{row['ok']}/{row['workers']}", f"{row['load']:.1f}", rounds]
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="llama-1b-qv, sync and local H=16 overlapped only")
    parser.add_argument("--payloads", default="", help="comma-separated: " + ", ".join(PAYLOADS))
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--caps", default="10,50,200", help="Mbit/s per host, comma-separated")
    parser.add_argument("--modes", default="sync,local", help="sync, local or both (comma-separated)")
    parser.add_argument("--local-steps", help="local mode: local steps H per round (default 4,16,64; quick: 16)")
    parser.add_argument("--overlap", choices=("both", "on", "off"),
                        help="local mode: the round's all-reduce overlapped with the next H steps, or blocking "
                        "(default both; quick: on)")
    parser.add_argument("--compression", default="", help="none, fp16 or 8bit (comma-separated; default: none "
                        "for sync, fp16 for local; 8bit is local mode only)")
    parser.add_argument("--epochs", type=int, default=2, help="measured rounds (after the warm-up ones)")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=STEPS_PER_EPOCH * BATCH * 512,
                        help=f"tokens each worker processes per {STEPS_PER_EPOCH} steps (sync's epoch); "
                        f"a step is {BATCH} sequences")
    parser.add_argument("--flops", type=float, default=100e12, help="effective FLOP/s of the stand-in GPU")
    parser.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd",
                        help="the shards' torch optimizer (local mode steps it every microbatch: on these CPUs "
                        "Adam over 42 M values takes 0.4 s, on the stand-in GPU milliseconds)")
    parser.add_argument("--matchmaking-time", type=float, default=3.0, help="nomoat's default")
    parser.add_argument("--timeout", type=float, default=300.0, help="averaging timeout (s)")
    parser.add_argument("--config-timeout", type=float, default=900.0)
    parser.add_argument("--grace", type=float, default=60.0, help="wait for stragglers after the first result")
    parser.add_argument("--logs", type=Path, help="keep every worker's log in this directory")
    args = parser.parse_args()
    args.local_steps = args.local_steps or ("16" if args.quick else "4,16,64")
    args.overlap = args.overlap or ("on" if args.quick else "both")
    names = args.payloads.split(",") if args.payloads else (["llama-1b-qv"] if args.quick else list(PAYLOADS))
    rows = averaging_rows(args)
    print(" | ".join(COLUMNS), flush=True)
    for name in names:
        payload = PAYLOADS[name]
        for workers in [int(w) for w in args.workers.split(",")]:
            caps = [None] if workers == 1 else [float(c) for c in args.caps.split(",")]
            for cap in caps:
                for averaging in rows:
                    print(format_row(run_config(payload, workers, cap, averaging, args)), flush=True)


def _worker_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for flag, kind in (("--index", int), ("--host", str), ("--iface", str), ("--workers", int),
                       ("--peers-file", str), ("--lora-params", int), ("--step-compute", float),
                       ("--steps-per-round", int), ("--mode", str), ("--overlap", int), ("--compression", str),
                       ("--link-mbit", float), ("--optimizer", str), ("--epochs", int), ("--warmup-epochs", int),
                       ("--matchmaking-time", float), ("--timeout", float), ("--result", str)):
        parser.add_argument(flag, type=kind, required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    from swarm.log import configure_logging

    configure_logging()
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(_worker_args(sys.argv[2:]))
    else:
        main()
