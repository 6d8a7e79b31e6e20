"""What the ``swarm`` commands share: the coordinator address option, calling a coordinator, failing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Callable, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from swarm.client import CoordinatorClient, Endpoint

T = TypeVar("T")

DEFAULT_COORDINATOR = "127.0.0.1:50051"

CoordinatorAddress = Annotated[str, typer.Option("--coordinator", "-c", help="Coordinator host:port.")]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def ask(coordinator: "str | Endpoint", request: Callable[[CoordinatorClient], T]) -> T:
    """``request(client)`` on a client of ``coordinator``; a refusal or an unreachable coordinator fails the
    command with the coordinator's message."""
    from swarm.client import CoordinatorClient, CoordinatorError  # gRPC: imported only by a command that runs

    try:
        with CoordinatorClient(coordinator) as client:
            return request(client)
    except CoordinatorError as exc:
        fail(str(exc))
