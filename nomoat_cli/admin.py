"""Operator commands: ``swarm token create|list|revoke`` (join tokens) and ``swarm run stop|archive|remove|
default`` (run administration). Each needs the operator token (``--operator-token-file`` or the environment)."""

from __future__ import annotations

import typer

from nomoat_cli.common import (DEFAULT_COORDINATOR, CaFile, CoordinatorAddress, Fingerprint, Insecure, ask,
                               coordinator_endpoint)
from nomoat_cli.credentials import OperatorTokenFile, with_credentials

token_app = typer.Typer(help="Join tokens of runs with join policy 'token' (operator).", no_args_is_help=True)
run_app = typer.Typer(help="Run administration: stop, archive, remove, the default run (operator).",
                      no_args_is_help=True)


@token_app.command("create")
def token_create(
    run: str = typer.Option(..., help="Run name."),
    label: str = typer.Option("", help="Who the token is for (shown by 'swarm token list')."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Mint a join token of a run; it is printed this once (the coordinator keeps only its hash)."""
    created = ask(operator(coordinator, ca, fingerprint, insecure, operator_token_file),
                  lambda client: client.create_join_token(run, label))
    typer.echo(f"join token {created.info.token_id} of run {run} (give it to the volunteer; it is not shown again):")
    typer.echo(created.token)


@token_app.command("list")
def token_list(
    run: str = typer.Option(..., help="Run name."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """The run's join tokens: id, label, created, revoked (never the tokens)."""
    tokens = ask(operator(coordinator, ca, fingerprint, insecure, operator_token_file), lambda client: client.list_join_tokens(run))
    if not tokens:
        typer.echo(f"run {run} has no join tokens")
    for token in tokens:
        revoked = f"revoked {token.revoked_at[:19]}" if token.revoked_at else "valid"
        typer.echo(f"{token.token_id:>5}  {token.label[:40]!r:<42} created {token.created_at[:19]}  {revoked}")


@token_app.command("revoke")
def token_revoke(
    token_id: int = typer.Argument(..., help="Token id (from 'swarm token list')."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Revoke a join token: no one joins with it again (workers that joined stay)."""
    info = ask(operator(coordinator, ca, fingerprint, insecure, operator_token_file), lambda client: client.revoke_join_token(token_id))
    typer.echo(f"join token {info.token_id} of run {info.run_name} revoked")


def operator(coordinator: str, ca, fingerprint, insecure: bool, operator_token_file):
    """The command's endpoint, presenting the operator token."""
    return with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file)


def _set_state(endpoint, name: str, state: str, force: bool = False) -> None:
    response = ask(endpoint,
                   lambda client: client.set_run_state(name, state, force))
    typer.echo(f"run {response.run_name} is {response.state}")


@run_app.command("stop")
def run_stop(
    name: str = typer.Argument(..., help="Run name."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Stop a run: no new joins, no periodic publishing; status shows it as stopped."""
    _set_state(operator(coordinator, ca, fingerprint, insecure, operator_token_file), name, "stopped")


@run_app.command("archive")
def run_archive(
    name: str = typer.Argument(..., help="Run name."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Archive a run: stopped, and hidden from 'swarm status' unless --all."""
    _set_state(operator(coordinator, ca, fingerprint, insecure, operator_token_file), name, "archived")


@run_app.command("remove")
def run_remove(
    name: str = typer.Argument(..., help="Run name."),
    force: bool = typer.Option(False, "--force", help="Remove it even though it is healthy."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Remove a broken run (one this coordinator cannot serve): no longer served and hidden; its versions'
    files are kept."""
    _set_state(operator(coordinator, ca, fingerprint, insecure, operator_token_file), name, "removed", force)


@run_app.command("default")
def run_default(
    name: str = typer.Argument("", help="Run name; empty: no default run."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Make a run the one 'swarm donate' without --run joins (otherwise such joins are refused)."""
    info = ask(operator(coordinator, ca, fingerprint, insecure, operator_token_file), lambda client: client.set_default_run(name))
    typer.echo(f"default run: {info.default_run or 'none'}")
