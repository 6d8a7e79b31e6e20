"""The ``swarm`` command line: one small typed function per command, assembled here in one Typer app."""

from __future__ import annotations

import typer

from nomoat_cli import adapters, admin, demo, doctor, donate, launch, reports, serve
from swarm.log import configure_logging

app = typer.Typer(help="nomoat: a community fine-tuning swarm of LoRA adapters over hivemind.\n\n"
                  "The coordinator's address: -c HOST[:PORT] on each command, or $NOMOAT_COORDINATOR, or "
                  "coordinator = \"HOST[:PORT]\" in ~/.config/nomoat/config.toml (defaults "
                  "for coordinator, ca, fingerprint, join_token_file, and donate's name, device, identity).",
                  no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None)  # plain help: shows "[lora] rank" and long derived flag names as written


def nomoat_version() -> str:
    """The installed nomoat's version ("unknown" when it runs from a checkout that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nomoat")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"swarm (nomoat) {nomoat_version()}")
        raise typer.Exit()


@app.callback()
def _entry_point(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print nomoat's version and exit."),
) -> None:
    # runs before every command: the CLI is an entry point, and so is every process it spawns (python -m nomoat_cli)
    configure_logging()
    _apply_user_config(ctx)


def _apply_user_config(ctx: typer.Context) -> None:
    """The defaults of ~/.config/nomoat/config.toml, below flags and environment variables."""
    from nomoat_cli.common import fail
    from nomoat_cli.user_defaults import default_map
    from swarm.paths import UserDirs
    from swarm.user_config import UserConfigError, load_user_config

    try:
        defaults = default_map(ctx.command, load_user_config(UserDirs.from_environment().user_config))
    except UserConfigError as exc:
        fail(str(exc))
    if defaults:
        ctx.default_map = {**(ctx.default_map or {}), **defaults}


app.command()(serve.coordinator)
app.command()(launch.launch)
app.command()(donate.donate)
app.command()(adapters.pull)
app.command()(adapters.release)
app.command()(adapters.export)
app.command()(reports.status)
app.command()(reports.leaderboard)
app.command()(demo.demo)
app.command()(doctor.doctor)
app.add_typer(admin.token_app, name="token")
app.command("run")(admin.run)
app.add_typer(admin.peer_app, name="peer")
