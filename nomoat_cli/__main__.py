"""``python -m nomoat_cli``: the ``swarm`` command (how the demo and the tests start their processes)."""

from nomoat_cli.app import app

app(prog_name="swarm")
