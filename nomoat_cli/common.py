"""What the ``swarm`` commands share: the coordinator address option and the way a command fails."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

DEFAULT_COORDINATOR = "127.0.0.1:50051"

CoordinatorAddress = Annotated[str, typer.Option("--coordinator", "-c", help="Coordinator host:port.")]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)
