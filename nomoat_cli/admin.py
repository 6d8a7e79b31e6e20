"""Operator commands: ``swarm token create|list|revoke`` (join tokens), ``swarm run stop|archive|resume|remove|
default`` (run administration) and ``swarm peer ban|unban`` (peers banned from runs). Each needs the operator token (``--operator-token-file`` or the environment)."""

from __future__ import annotations

import typer

from nomoat_cli.common import (DEFAULT_COORDINATOR, CaFile, CoordinatorAddress, Fingerprint, Insecure, ask,
                               coordinator_endpoint, fail)
from nomoat_cli.credentials import OperatorTokenFile, with_credentials
from nomoat_cli.units import utc_time

token_app = typer.Typer(help="Join tokens of runs with join policy 'token' (operator).", no_args_is_help=True)


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
    """Mint a join token of a run; it is printed this once (the coordinator keeps only its hash).

    \b
    Example:
      swarm token create -c coord.example.org --run myrun --label alice
    """
    created = ask(with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file),
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
    """The run's join tokens: id, label, created, revoked (never the tokens); times in UTC.

    \b
    Example:
      swarm token list -c coord.example.org --run myrun
    """
    endpoint = with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file)
    tokens = ask(endpoint, lambda client: client.list_join_tokens(run))
    if not tokens:
        typer.echo(f"run {run} has no join tokens")
    for token in tokens:
        revoked = f"revoked {utc_time(token.revoked_at)}" if token.revoked_at else "valid"
        typer.echo(f"{token.token_id:>5}  {token.label[:40]!r:<42} created {utc_time(token.created_at)}  {revoked}")


@token_app.command("revoke")
def token_revoke(
    token_id: int = typer.Argument(..., help="Token id (from 'swarm token list')."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Revoke a join token: no one joins with it again (workers that joined stay).

    \b
    Example:
      swarm token revoke -c coord.example.org 3
    """
    endpoint = with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file)
    info = ask(endpoint, lambda client: client.revoke_join_token(token_id))
    typer.echo(f"join token {info.token_id} of run {info.run_name} revoked")


RUN_ACTIONS = {  # swarm run ACTION: the state a run is put in
    "stop": "stopped",  # no new joins, no periodic publishing; status shows it as stopped
    "archive": "archived",  # stopped, and hidden from 'swarm status' unless --all
    "resume": "active",  # a stopped or archived run takes workers and publishes again
    "remove": "removed",  # a broken run (one this coordinator cannot serve): hidden, no longer served, files kept
}


def run(
    action: str = typer.Argument(..., help="stop, archive, resume, remove (a broken run; --force for a healthy "
                                 "one), or default (the run 'swarm donate' without --run joins; no NAME: none)."),
    name: str = typer.Argument("", help="Run name."),
    force: bool = typer.Option(False, "--force", help="remove: even a healthy run."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Run administration (operator): swarm run stop|archive|resume|remove|default NAME.

    \b
    Example:
      swarm run stop -c coord.example.org myrun
    """
    if action != "default" and action not in RUN_ACTIONS:
        fail(f"unknown action {action!r}: choose one of {', '.join([*RUN_ACTIONS, 'default'])}")
    if action != "default" and not name:
        fail(f"swarm run {action} needs the run's NAME")
    endpoint = with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file)
    if action == "default":
        info = ask(endpoint, lambda client: client.set_default_run(name))
        typer.echo(f"default run: {info.default_run or 'none'}")
        return
    response = ask(endpoint, lambda client: client.set_run_state(name, RUN_ACTIONS[action], force))
    typer.echo(f"run {response.run_name} is {response.state}")


peer_app = typer.Typer(help="Peers banned from runs (operator).", no_args_is_help=True)


@peer_app.command("ban")
def peer_ban(
    peer_id: str = typer.Argument(..., help="The peer's libp2p peer ID (as 'swarm status' and the leaderboard show)."),
    run: str = typer.Option(..., help="Run name."),
    reason: str = typer.Option("", help="Why (shown by 'swarm status')."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Ban a peer from a run: its access token is not renewed, it cannot rejoin, the coordinator's DHT refuses it.

    \b
    Example:
      swarm peer ban -c coord.example.org --run myrun --reason 'sent NaN' 12D3KooW...
    """
    endpoint = with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file)
    info = ask(endpoint, lambda client: client.ban_peer(run, peer_id, reason))
    typer.echo(f"peer {info.peer_id} is banned from run {info.run_name} ({info.reason})")


@peer_app.command("unban")
def peer_unban(
    peer_id: str = typer.Argument(..., help="The peer's libp2p peer ID."),
    run: str = typer.Option(..., help="Run name."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    operator_token_file: OperatorTokenFile = None,
) -> None:
    """Lift a peer's ban from a run (the reports against it are forgotten); it may join again.

    \b
    Example:
      swarm peer unban -c coord.example.org --run myrun 12D3KooW...
    """
    endpoint = with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file)
    info = ask(endpoint, lambda client: client.unban_peer(run, peer_id))
    typer.echo(f"peer {info.peer_id} may join run {info.run_name} again")
