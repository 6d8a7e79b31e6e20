"""The commands a volunteer types first start without torch, PEFT, transformers or hivemind: ``swarm status`` and
``swarm leaderboard`` against a real coordinator, run as child processes the way the ``swarm`` script runs them.
(The help screens are checked in test_cli.py; the CPU figures are benchmarks/cli_startup.py's.)"""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from coordinator.server import Coordinator, CoordinatorConfig
from nomoat_cli.app import app
from swarm.identity import load_or_create_identity, peer_id_of_public_key

HEAVY = ("torch", "peft", "transformers", "hivemind")
PROBE = ("import runpy, sys\nsys.argv = ['swarm', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('nomoat_cli', run_name='__main__')\nexcept SystemExit as exc:\n"
         "    assert not exc.code, exc.code\n"
         f"print('heavy:', ' '.join(m for m in {HEAVY!r} if m in sys.modules))\n")


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    with Coordinator(CoordinatorConfig(data_dir=tmp_path_factory.mktemp("coord"), port=0, publish=False)) as running:
        launched = CliRunner().invoke(app, ["launch", "-c", running.address, "--name", "startup",
                                            "--operator-token-file", str(running.operator_token_file)])
        assert launched.exit_code == 0, launched.output
        yield running


def heavy_modules_of(*args: str) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.rsplit("heavy:", 1)[1].strip()


def test_importing_the_cli_app_loads_no_heavy_library():
    script = f"import sys, nomoat_cli.app, swarm\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("command", ["status", "leaderboard --run startup --all"])
def test_status_and_leaderboard_answer_without_heavy_libraries(coordinator, command):
    assert heavy_modules_of(*command.split(), "-c", coordinator.address) == ""


def test_peer_ids_are_derived_without_hivemind_as_libp2p_derives_them(tmp_path):
    from hivemind.p2p import PeerID

    for index in range(3):
        identity = load_or_create_identity(tmp_path / f"key{index}")
        libp2p = PeerID.from_identity(identity.path.read_bytes()).to_base58()
        assert peer_id_of_public_key(identity.public_key_der) == libp2p == identity.peer_id
