"""Robust aggregation's cost: seconds per all-reduce round and the aggregation's share of it, for hivemind's
plain reducer and nomoat's robust one with ``mean``, ``trimmed_mean``, ``median`` and ``centered_clip``, on the
LoRA payloads of ``benchmarks/swarm_efficiency.py`` (rank 16 on Llama-1B/8B, q,v or all 7 modules) and the
built-in tiny model's (rank 8), side by side in one run.

Four real averagers (each with its own DHT) on loopback, no bandwidth cap, fp32 parts of hivemind's default
512 KiB. A round is timed inside each averager's process, from the start of its all-reduce to its end (no
matchmaking); the aggregation is the time its reducer spent screening and combining parts. Figures are the
mean over peers and rounds.

    .venv/bin/python benchmarks/robust_aggregation.py                 # tiny, 1B and 8B q,v payloads
    .venv/bin/python benchmarks/robust_aggregation.py --payloads llama-8b-all --rounds 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

import hivemind  # noqa: E402
import torch  # noqa: E402

from swarm_efficiency import ALL, PAYLOADS, QV, lora_params  # noqa: E402
from swarm.dht import start_dht, visible_addresses  # noqa: E402
from swarm.robust_allreduce import RobustAllReduceRunner, RobustAveragingMixin, RobustTensorPartReducer  # noqa: E402
from swarm.spec import RobustnessSpec  # noqa: E402

SIZES = {
    "tiny-qv": lora_params(64, 32, 160, 4, QV, rank=8),
    "tiny-all": lora_params(64, 32, 160, 4, ALL, rank=8),
    **{name: payload.lora_params for name, payload in PAYLOADS.items()},
}
DEFAULT_PAYLOADS = "tiny-qv,tiny-all,llama-1b-qv,llama-1b-all,llama-8b-qv"
AGGREGATORS = ("hivemind", "mean", "trimmed_mean", "median", "centered_clip")
TIMINGS: Any = None  # an mp.Queue of (round seconds, aggregation seconds), made before any averager starts


class TimedReducer(RobustTensorPartReducer):
    seconds = 0.0

    def _reduce_current_part(self) -> torch.Tensor:
        started = time.perf_counter()
        try:
            return super()._reduce_current_part()
        finally:
            self.seconds += time.perf_counter() - started


class TimedRunner(RobustAllReduceRunner):
    reducer_class = TimedReducer

    def __init__(self, **kwargs: Any):
        self.started = time.perf_counter()
        super().__init__(**kwargs)

    def report_refusals(self) -> None:  # called once the round is over: a convenient place to time it
        super().report_refusals()
        TIMINGS.put((time.perf_counter() - self.started, self.tensor_part_reducer.seconds))


class TimedRobustAverager(RobustAveragingMixin, hivemind.DecentralizedAverager):
    runner_class = TimedRunner


class TimedPlainAverager(hivemind.DecentralizedAverager):
    async def _run_allreduce_inplace_(self, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        await super()._run_allreduce_inplace_(*args, **kwargs)
        TIMINGS.put((time.perf_counter() - started, float("nan")))


def measure(dhts: list[hivemind.DHT], size: int, aggregator: str, rounds: int) -> tuple[float, float]:
    """Mean seconds per round and mean aggregation seconds per peer and round."""
    generator = torch.Generator().manual_seed(0)
    options = dict(prefix=f"bench_{aggregator}_{size}", start=True, target_group_size=len(dhts),
                   min_group_size=len(dhts), min_matchmaking_time=2.0, request_timeout=1.0,
                   next_chunk_timeout=120.0, allreduce_timeout=600.0)
    averagers = []
    for dht in dhts:
        tensors = [torch.randn(size, generator=generator)]
        if aggregator == "hivemind":
            averagers.append(TimedPlainAverager(tensors, dht, **options))
        else:
            averagers.append(TimedRobustAverager(tensors, dht, robustness=RobustnessSpec(aggregator=aggregator),
                                                 **options))
    try:
        samples = []
        for _ in range(rounds):
            with ThreadPoolExecutor(len(averagers)) as pool:
                list(pool.map(lambda averager: averager.step(timeout=900), averagers))
            samples += [TIMINGS.get(timeout=60) for _ in averagers]
        return statistics.mean(s for s, _ in samples), statistics.mean(a for _, a in samples)
    finally:
        for averager in averagers:
            averager.shutdown()


def main() -> None:
    global TIMINGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", default=DEFAULT_PAYLOADS, help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--aggregators", default=",".join(AGGREGATORS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    TIMINGS = mp.Queue()
    first = start_dht()
    dhts = [first] + [start_dht(visible_addresses(first)) for _ in range(args.peers - 1)]
    try:
        print(f"{'payload':<13} {'MB':>7} {'aggregator':<14} {'s/round':>8} {'aggregation s':>13} {'share':>6}",
              flush=True)
        for name in args.payloads.split(","):
            size = SIZES[name]
            for aggregator in args.aggregators.split(","):
                seconds, aggregation = measure(dhts, size, aggregator, args.rounds)
                share = "-" if aggregator == "hivemind" else f"{aggregation / seconds:.0%}"
                shown = "-" if aggregator == "hivemind" else f"{aggregation:.3f}"
                print(f"{name:<13} {size * 4 / 1e6:>7.1f} {aggregator:<14} {seconds:>8.3f} {shown:>13} {share:>6}",
                      flush=True)
    finally:
        for dht in dhts:
            dht.shutdown()


if __name__ == "__main__":
    main()
