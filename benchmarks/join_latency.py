"""Join and publish latency on simulated hosts (tests/netns.py, needs root), tiny preset:

1. a new worker joining a swarm that is already training: seconds from starting ``swarm donate`` to
   joining the run (coordinator answered), to holding the swarm's state (downloaded from peers), to its first
   averaging round with the others (its first contributed step), and to its first receipt in the ledger;
2. an epoch boundary to a published version: seconds from the moment a worker enters a new epoch to the
   moment ``PublishNow`` returns a version of that epoch (state download from peers, merge, eval, store).
   The periodic publisher adds up to ``publish_interval_s`` of waiting on top.

    .venv/bin/python benchmarks/join_latency.py                   # 2 workers + 1 newcomer, 50 Mbit/s, 3 joins
    .venv/bin/python benchmarks/join_latency.py --cap 10 --joins 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from netns import Network, NetSwarm  # noqa: E402
from swarm.client import CoordinatorClient  # noqa: E402

RUN = "joinbench"


def _cli(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "nomoat_cli", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)


def _wait_line(swarm: NetSwarm, log: str, pattern: str, since: int, timeout: float) -> float | None:
    """time.monotonic() when ``pattern`` first appears in ``log`` after offset ``since`` (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pattern in swarm.log(log)[since:]:
            return time.monotonic()
        time.sleep(0.05)
    return None


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap", type=float, default=50.0, help="Mbit/s of every host's link")
    parser.add_argument("--joins", type=int, default=3, help="newcomers, one after the other")
    parser.add_argument("--publishes", type=int, default=3, help="epoch boundaries to publish right after")
    args = parser.parse_args()
    join = {"joined run": [], "state downloaded": [], "first averaging round": [], "first ledger receipt": []}
    publish = []
    with Network(tag="join") as net, tempfile.TemporaryDirectory() as tmp:
        coordinator = net.add_host("coord", rate_mbit=args.cap)
        hosts = [net.add_host(f"w{i}", rate_mbit=args.cap) for i in range(3)]
        with NetSwarm(net, Path(tmp)) as swarm:
            address = swarm.start_coordinator_on(coordinator, ["--no-publish"])
            _cli("launch", "-c", address, *swarm.trust, "--operator-token-file", str(swarm.operator_token_file),
                 "--name", RUN, "--base-model", "tiny", "--dataset", "sample",
                 "--shards", "1", "--batch-size-per-step", "8", "--target-batch-size", "128", "--lr", "0.01",
                 "--data-slices", "3",
                 "--averaging-matchmaking-time", "2", "--averaging-averaging-timeout", "20",
                 "--averaging-progress-refresh-s", "0.5")
            for index in range(2):
                swarm.start_worker_on(hosts[index], address, RUN, index, ["--wait-for-peers", "2"])
            if _wait_line(swarm, "worker0.log", "Transitioning to epoch 2", 0, 180) is None:
                raise RuntimeError("the swarm did not start; logs in " + tmp)

            # 2. epoch boundary -> published version
            for _ in range(args.publishes):
                since = len(swarm.log("worker0.log"))
                boundary = _wait_line(swarm, "worker0.log", "Transitioning to epoch", since, 60)
                with CoordinatorClient(swarm.operator_endpoint()) as client:
                    outcome = client.publish_now(RUN)
                if outcome.published:
                    publish.append(time.monotonic() - boundary)
                else:
                    print(f"publish refused: {outcome.message}", file=sys.stderr)

            # 1. newcomers on the third host, one at a time, each with a fresh identity
            for attempt in range(args.joins):
                index = 2 + attempt
                log = f"worker{index}.log"
                started = time.monotonic()
                process = swarm.start_worker_on(hosts[2], address, RUN, index, ["--max-seconds", "25"])
                marks = {
                    "joined run": _wait_line(swarm, log, "joined run", 0, 120),
                    "state downloaded": _wait_line(swarm, log, "Downloading parameters from peer", 0, 120),
                    "first averaging round": _wait_line(swarm, log, "Averaged gradients with", 0, 120),
                }
                peer = None
                for line in swarm.log(log).splitlines():
                    if "joined run" in line:
                        peer = line.split(" as ")[1].split(":")[0]
                deadline = time.monotonic() + 60
                while peer and time.monotonic() < deadline:
                    with CoordinatorClient(swarm.endpoint) as client:
                        board = client.leaderboard(RUN, include_unverified=True)
                    if any(entry.peer_id == peer for entry in board.entries):
                        marks["first ledger receipt"] = time.monotonic()
                        break
                    time.sleep(0.2)
                for name, moment in marks.items():
                    if moment is not None:
                        join[name].append(moment - started)
                process.terminate()
                process.wait(timeout=60)
    print(f"tiny preset, hosts capped at {args.cap:g} Mbit/s, swarm of 2 workers training")
    print(f"{'from starting swarm donate to':<32} {'seconds: median (min, max)':>30}")
    for name, values in join.items():
        print(f"{name:<32} {_stats(values):>30}   n={len(values)}")
    print(f"{'epoch boundary to PublishNow done':<32} {_stats(publish):>30}   n={len(publish)}")


if __name__ == "__main__":
    main()
