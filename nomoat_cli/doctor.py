"""``swarm doctor``: what this machine can give a run (devices, memory, precisions, reachability), and with -c
the round-trip time to a coordinator and the download rate of a run's adapter."""

from __future__ import annotations

from typing import Optional

import typer

from nomoat_cli.common import CaFile, Fingerprint, Insecure, coordinator_endpoint, fail


def doctor(
    coordinator: Optional[str] = typer.Option(None, "--coordinator", "-c", envvar="NOMOAT_COORDINATOR",
                                              help="Also measure the link to this coordinator (HOST[:PORT])."),
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    run: str = typer.Option("", help="Time the download of this run's latest adapter."),
) -> None:
    """Check this machine before donating: devices and memory, the precisions each can train in, whether this
    host is reachable from outside or should use --client-mode, and the link to a coordinator.

    \b
    Example:
      swarm doctor -c coord.example.org --run myrun
    """
    from swarm.client import CoordinatorError
    from swarm.doctor import coordinator_report, machine_report

    for line in machine_report():
        typer.echo(line)
    if coordinator:
        try:
            for line in coordinator_report(coordinator_endpoint(coordinator, ca, fingerprint, insecure), run):
                typer.echo(line)
        except CoordinatorError as exc:
            fail(str(exc))
