"""The CLI's help and its error messages on bad input, against a real coordinator (nothing stored on error)."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from coordinator.server import Coordinator, CoordinatorConfig
from nomoat_cli.app import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["coordinator", "launch", "donate", "pull", "status", "demo"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and "--help" in result.output


def test_help_imports_no_heavy_library():
    """``swarm --help`` stays fast: torch, PEFT, hivemind and gRPC load only inside the command that uses them."""
    script = ("import sys\nfrom typer.testing import CliRunner\nfrom nomoat_cli.app import app\n"
              "for args in (['--help'], ['launch', '--help'], ['donate', '--help'], ['coordinator', '--help']):\n"
              "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
              "print(' '.join(m for m in ('torch', 'peft', 'transformers', 'hivemind', 'grpc') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    with Coordinator(CoordinatorConfig(data_dir=tmp_path_factory.mktemp("coord"), port=0, publish=False)) as running:
        yield running


def launch(coordinator, *args):
    return runner.invoke(app, ["launch", "-c", coordinator.address, *args])


def test_launch_then_status(coordinator):
    result = launch(coordinator, "--name", "good", "--data-slices", "2")
    assert result.exit_code == 0, result.output
    assert "launched run 'good'" in result.output and "1800 train / 200 eval" in result.output
    status = runner.invoke(app, ["status", "-c", coordinator.address])
    assert "run good: base tiny, dataset sample, 1 shard(s), 0 live worker(s)" in status.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", "x1", "--base-model", "/no/such/model"], "no such directory"),
        (["--name", "x2", "--dataset", "/no/such/data.jsonl"], "no such file"),
        (["--name", "x3", "--shards", "9"], "cannot exceed the base model's number of layers (4)"),
        (["--name", "x4", "--batch-size", "16", "--target-batch-size", "8"], "target_batch_size (8)"),
        (["--name", "Bad Name"], "name"),
    ],
)
def test_launch_refuses_bad_input_and_stores_nothing(coordinator, args, message):
    result = launch(coordinator, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert args[1] not in {run.name for run in coordinator.storage.list_runs()}


def test_relaunch_with_a_different_spec_keeps_the_original(coordinator):
    assert launch(coordinator, "--name", "keep", "--lr", "0.01").exit_code == 0
    before = coordinator.storage.get_run("keep")
    result = launch(coordinator, "--name", "keep", "--lr", "0.5")
    assert result.exit_code == 2 and "already exists with a different spec" in result.output
    assert coordinator.storage.get_run("keep") == before


def test_unreachable_coordinator_is_a_clear_error():
    result = runner.invoke(app, ["status", "-c", "127.0.0.1:1"])
    assert result.exit_code == 2 and "unreachable" in result.output
