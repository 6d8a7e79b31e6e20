"""CPU cost of starting the ``swarm`` commands a volunteer types first: ``swarm --help`` and ``swarm status`` against
a real coordinator process on loopback (with one launched run, so the answer is not empty).

Each command runs ``--repeat`` times as a child process (``python -m nomoat_cli``, the same code as the ``swarm``
script); its CPU is the children's user + sys rusage, its wall time measured around it. Prints the median, min and
max of each, and the modules of torch, transformers, peft and hivemind the command imported.

    .venv/bin/python benchmarks/cli_startup.py                     # this checkout
    .venv/bin/python benchmarks/cli_startup.py --tree /tmp/before  # another checkout (e.g. before the lazy imports)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from swarm.credentials import OPERATOR_TOKEN_FILE  # noqa: E402
from tests.coordinator_process import CoordinatorProcess  # noqa: E402

HEAVY = ("torch", "transformers", "peft", "hivemind")
PROBE = ("import runpy, sys\nsys.argv = ['swarm', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('nomoat_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('heavy:', ','.join(m for m in {heavy!r} if m in sys.modules) or '-', file=sys.stderr)\n")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(args: list[str], env: dict, repeat: int, tree: Path) -> tuple[list[float], list[float]]:
    """CPU seconds and wall seconds of ``repeat`` runs of ``python -m nomoat_cli *args``."""
    cpu, wall = [], []
    for _ in range(repeat):
        before, started = children_cpu(), time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "nomoat_cli", *args], env=env, capture_output=True, text=True,
                              cwd=tree)  # -m and -c put the working folder first on sys.path
        wall.append(time.perf_counter() - started)
        cpu.append(children_cpu() - before)
        if done.returncode != 0:
            raise SystemExit(f"swarm {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return cpu, wall


def heavy_modules(args: list[str], env: dict, tree: Path) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], env=env, capture_output=True,
                          text=True, cwd=tree)
    return next((line.split(": ", 1)[1] for line in done.stderr.splitlines() if line.startswith("heavy: ")), "?")


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):5.2f} s  (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE, help="The checkout whose CLI is measured.")
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    tree = options.tree.resolve()
    os.chdir(tree)  # the coordinator process too runs the measured tree's code
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "PYTHONPATH": str(tree), "XDG_CONFIG_HOME": f"{workdir}/config",
               "XDG_CACHE_HOME": f"{workdir}/cache", "HF_HUB_OFFLINE": "1"}
        coordinator = CoordinatorProcess(Path(workdir) / "coordinator", env=env).start()
        try:
            token_file = coordinator.data_dir / OPERATOR_TOKEN_FILE
            subprocess.run([sys.executable, "-m", "nomoat_cli", "launch", "-c", coordinator.address, "--name",
                            "bench", "--operator-token-file", str(token_file)], env=env, check=True,
                           capture_output=True, cwd=tree)
            commands = {"swarm --help": ["--help"], "swarm status": ["status", "-c", coordinator.address]}
            print(f"tree {options.tree.resolve()}, {options.repeat} runs each, CPU = user + sys of the child")
            for label, args in commands.items():
                cpu, wall = measure(args, env, options.repeat, tree)
                print(f"{label:<14} cpu {summary(cpu)}   wall {summary(wall)}   heavy imports: "
                      f"{heavy_modules(args, env, tree)}")
        finally:
            coordinator.stop()


if __name__ == "__main__":
    main()
