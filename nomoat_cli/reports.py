"""Read-only commands on a coordinator: ``swarm status`` and ``swarm leaderboard``."""

from __future__ import annotations

import typer

from nomoat_cli.common import (DEFAULT_COORDINATOR, CaFile, CoordinatorAddress, Fingerprint, Insecure,
                               ask, coordinator_endpoint)
from nomoat_cli.credentials import JoinToken, OperatorTokenFile, with_credentials
from nomoat_cli.units import hours_minutes, utc_time
from swarm.text import printable


def say(line: str) -> None:
    """Print a line made of what a coordinator sent: its escape sequences and control characters removed."""
    typer.echo(printable(line))


def status(
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    run: str = typer.Option("", help="Only this run."),
    all_runs: bool = typer.Option(False, "--all", help="Also archived and removed runs."),
    operator_token_file: OperatorTokenFile = None,
    join_token: JoinToken = "",
) -> None:
    """List runs (state, join policy), live workers per shard, samples trained and published versions. Private
    runs are listed for the operator and for holders of one of their join tokens.

    A run's samples count each sample once; a shard's, the samples that trained that shard (with several shards,
    their sum is in sample-shards). Only verified work counts. Times are UTC.

    \b
    Example:
      swarm status -c coord.example.org --run myrun
    """
    endpoint = with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file,
                                join_token)
    response = ask(endpoint, lambda client: client.status(run, include_archived=all_runs))
    if not response.runs:
        say("no runs")
    for state in response.runs:
        access = f"{state.state}, join {state.join_policy}" + (", private" if state.private else "")
        sample_shards = sum(shard.samples for shard in state.shard_status)
        per_shard = f" ({sample_shards} sample-shards)" if len(state.shard_status) > 1 else ""
        say(f"run {state.run_name} [{access}]: base {state.base_model}, dataset {state.dataset}, "
            f"{state.shards} shard(s), {state.live_workers} live worker(s), {state.samples_trained} samples "
            f"trained{per_shard}")
        if state.unavailable:
            say(f"  UNAVAILABLE: {state.unavailable}")
        for shard in state.shard_status:
            say(f"  shard {shard.shard}: {shard.live_workers} worker(s), epoch {shard.epoch}, "
                f"{shard.samples} samples")
        if state.parent:
            say(f"  stacked on {state.parent}")
        for version in state.versions:
            marks = " [release]" if version.release else " [removed by retention]" if version.collected else ""
            say(f"  version {version.version}: epoch {version.epoch}, eval loss {version.eval_loss:.4f} "
                f"(base {version.base_eval_loss:.4f}), {len(version.contributors)} contributor(s), "
                f"sha256 {version.sha256[:16]}...{marks}")
        for ban in state.banned_peers:
            say(f"  banned peer {ban.peer_id} ({ban.banned_by}, {utc_time(ban.banned_at)}): {ban.reason}")
        for rejected in state.rejected_snapshots:
            at_epoch = f" at epoch {rejected.epoch}" if rejected.epoch >= 0 else ""
            say(f"  rejected snapshot{at_epoch} ({utc_time(rejected.attempted_at)}): {rejected.reason}")


def leaderboard(
    run: str = typer.Option(..., help="Run name."),
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    all_receipts: bool = typer.Option(False, "--all", help="Count unverified receipts too (never disputed ones)."),
    operator_token_file: OperatorTokenFile = None,
    join_token: JoinToken = "",
) -> None:
    """Contributors of a run: samples, verified samples, compute (hours:minutes), share of the run, last seen (UTC).

    A sample counts once however many shards it trained.

    \b
    Example:
      swarm leaderboard -c coord.example.org --run myrun --all
    """
    board = ask(with_credentials(coordinator_endpoint(coordinator, ca, fingerprint, insecure), operator_token_file,
                                 join_token),
                lambda client: client.leaderboard(run, include_unverified=all_receipts))
    counted = "verified + unverified" if all_receipts else "verified"
    say(f"run {run}: {board.total_samples} {counted} samples")
    if not board.entries:
        say("no contributions yet" if all_receipts else "no verified contributions yet (try --all)")
        return
    say(f"{'#':>3}  {'contributor':<20} {'peer id':<16} {'samples':>10} {'verified':>10} {'compute':>9} "
        f"{'share':>6}  last seen")
    for rank, entry in enumerate(board.entries, start=1):
        disputed = f"  ({entry.disputed_receipts} disputed)" if entry.disputed_receipts else ""
        say(f"{rank:>3}  {printable(entry.display_name, 20):<20} {entry.peer_id[:14] + '..':<16} {entry.samples:>10} "
            f"{entry.verified_samples:>10} {hours_minutes(entry.compute_hours):>9} "
            f"{entry.share:>6.1%}  {utc_time(entry.last_seen)}{disputed}")
    if board.omitted_entries:
        say(f"... and {board.omitted_entries} more contributor(s), left out by the coordinator's answer limit")
