"""The ``swarm`` command line: one small typed function per command, assembled here in one Typer app."""

from __future__ import annotations

import typer

from nomoat_cli import adapters, admin, demo, doctor, donate, launch, reports, serve
from swarm.log import configure_logging

app = typer.Typer(help="nomoat: a community fine-tuning swarm of LoRA adapters over hivemind.\n\n"
                  "The coordinator's address: -c HOST[:PORT] on each command, or $NOMOAT_COORDINATOR.",
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
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print nomoat's version and exit."),
) -> None:
    # runs before every command: the CLI is an entry point, and so is every process it spawns (python -m nomoat_cli)
    configure_logging()


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
