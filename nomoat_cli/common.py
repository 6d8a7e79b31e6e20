"""What the ``swarm`` commands share: the options that say how to reach a coordinator (address and TLS trust),
the Endpoint they make, calling a coordinator, failing.

A command that talks to a coordinator takes all four options and builds its one Endpoint from them::

    def status(coordinator: CoordinatorAddress = DEFAULT_COORDINATOR, ca: CaFile = None,
               fingerprint: Fingerprint = None, insecure: Insecure = False) -> None:
        response = ask(coordinator_endpoint(coordinator, ca, fingerprint, insecure), lambda c: c.status())
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, NoReturn, Optional, TypeVar

import typer

from swarm.text import printable

if TYPE_CHECKING:
    from swarm.client import CoordinatorClient, Endpoint

T = TypeVar("T")

COORDINATOR_PORT = 50051  # the gRPC port `swarm coordinator` serves on unless told otherwise
COORDINATOR_VARIABLE = "NOMOAT_COORDINATOR"
DEFAULT_COORDINATOR = f"127.0.0.1:{COORDINATOR_PORT}"

CoordinatorAddress = Annotated[str, typer.Option(
    "--coordinator", "-c", envvar=COORDINATOR_VARIABLE,
    help=f"Coordinator HOST:PORT; without :PORT, port {COORDINATOR_PORT} (the coordinator's default).")]
CaFile = Annotated[Optional[Path], typer.Option(
    "--ca", envvar="NOMOAT_CA", help="Trust the coordinator's TLS certificate if this CA certificate (PEM) signed it "
    "(default: the system's CA roots).")]
Fingerprint = Annotated[Optional[str], typer.Option(
    "--fingerprint", envvar="NOMOAT_FINGERPRINT", help="Trust exactly the coordinator certificate with this "
    "fingerprint (sha256:..., as `swarm coordinator` prints it): for a self-signed certificate.")]
Insecure = Annotated[bool, typer.Option(
    "--insecure", help="Plaintext gRPC even off loopback, for a coordinator its operator serves with --insecure: "
    "anyone on the path can read and change what you send.")]

LogFile = Annotated[Optional[Path], typer.Option(
    "--log-file", envvar="NOMOAT_LOG_FILE", help="Append hivemind's and the other libraries' logs, and nomoat's, "
    "to this file (the terminal shows nomoat's lines and the libraries' warnings only).")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", envvar="NOMOAT_VERBOSE", help="Show hivemind's and the other libraries' logs on the "
    "terminal too.")]


def coordinator_endpoint(coordinator: str, ca: Path | None, fingerprint: str | None, insecure: bool) -> Endpoint:
    """The Endpoint a command talks to, from its ``-c``, ``--ca``, ``--fingerprint`` and ``--insecure``; a
    malformed fingerprint or plaintext asked together with TLS trust fails the command."""
    from swarm.client import Endpoint  # gRPC: imported only by a command that runs
    from swarm.tls import TlsError, normalize_fingerprint

    try:
        pinned = normalize_fingerprint(fingerprint) if fingerprint else None
        return Endpoint(with_default_port(coordinator), ca_file=ca, fingerprint=pinned, insecure=insecure)
    except (TlsError, ValueError) as exc:
        fail(str(exc))


def with_default_port(address: str) -> str:
    """``address`` with the coordinator's default port when it names none: ``coord.example.org`` is
    ``coord.example.org:50051``, ``[::1]`` and ``::1`` are ``[::1]:50051``; one with a port stays as it is."""
    address = address.strip()
    if address.startswith("["):  # [IPv6] or [IPv6]:PORT
        return address if "]:" in address else f"{address}:{COORDINATOR_PORT}"
    if address.count(":") > 1:  # a bare IPv6 address cannot carry a port
        return f"[{address}]:{COORDINATOR_PORT}"
    return address if ":" in address or not address else f"{address}:{COORDINATOR_PORT}"


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def ask(coordinator: str | Endpoint, request: Callable[[CoordinatorClient], T]) -> T:
    """``request(client)`` on a client of ``coordinator``; a refusal or an unreachable coordinator fails the
    command with the coordinator's message."""
    from swarm.client import CoordinatorClient, CoordinatorError  # gRPC: imported only by a command that runs

    try:
        with CoordinatorClient(coordinator) as client:
            return request(client)
    except CoordinatorError as exc:
        fail(printable(str(exc), 2000))  # the message is the coordinator's: no escapes reach the terminal
