"""``swarm demo``: the whole pipeline on this machine (see ``swarm.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nomoat_cli.common import fail


def demo(
    workers: int = typer.Option(2, help="Worker processes (2-3 fit two cores)."),
    seconds: float = typer.Option(60.0, help="Training time of each worker."),
    shards: int = typer.Option(2, help="Adapter shards of the demo run."),
    workdir: Optional[Path] = typer.Option(None, help="Where the demo keeps all its files, its trusted coordinator "
                                           "keys, pull cache and identities included (default: a temp folder); "
                                           "your ~/.config/nomoat and ~/.cache/nomoat are left alone."),
) -> None:
    """Run the whole swarm on this machine: coordinator, a run on the tiny preset, workers, versions, a pull.

    \b
    Example:
      swarm demo --workers 2 --seconds 30
    """
    from swarm.demo import DemoConfig, run_demo

    try:
        result = run_demo(DemoConfig(workers=workers, seconds=seconds, shards=shards, workdir=workdir))
    except RuntimeError as exc:
        fail(str(exc))
    if not result.improved:
        fail("the pulled adapter did not lower the eval loss")
