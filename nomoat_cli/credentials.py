"""The credential options of the ``swarm`` commands: the operator token (administration) and a join token
(joining a token run, reading a private one), and the endpoint that presents them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from nomoat_cli.common import fail

if TYPE_CHECKING:
    from swarm.client import Endpoint

OperatorTokenFile = Annotated[Optional[Path], typer.Option(
    "--operator-token-file", help="File holding the operator token (the coordinator writes it to "
    "<data dir>/operator.token; or set NOMOAT_OPERATOR_TOKEN or NOMOAT_OPERATOR_TOKEN_FILE).")]
JoinToken = Annotated[str, typer.Option(
    "--join-token", envvar="NOMOAT_JOIN_TOKEN", show_envvar=False,
    help="A join token of the run (from its operator; or set NOMOAT_JOIN_TOKEN).")]


def with_credentials(coordinator: "str | Endpoint", operator_token_file: Path | None = None,
                     join_token: str = "") -> "Endpoint":
    """``coordinator`` as an Endpoint presenting the operator token (``--operator-token-file`` or the
    environment) and ``join_token``, if given; a token file that cannot be read fails the command."""
    from dataclasses import replace

    from swarm.client import Endpoint
    from swarm.credentials import CredentialError, operator_token

    endpoint = Endpoint.of(coordinator)
    try:
        token = operator_token(operator_token_file)
    except CredentialError as exc:
        fail(str(exc))
    if token:
        endpoint = replace(endpoint, operator_token=token)
    if join_token:
        endpoint = replace(endpoint, join_token=join_token)
    return endpoint
