"""The CLI's help and its error messages on bad input, against a real coordinator (nothing stored on error)."""

import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from coordinator.publisher import PublishPolicy, ShardSnapshot
from coordinator.server import Coordinator, CoordinatorConfig
from nomoat_cli.app import app
from nomoat_cli.launch import SPEC_FLAGS
from swarm.spec import RunSpec

runner = CliRunner()


@pytest.mark.parametrize("command", ["coordinator", "launch", "donate", "pull", "status", "demo", "token",
                                     "token create", "token list", "token revoke", "run", "run stop", "run archive",
                                     "run remove", "run default", "peer", "peer ban", "peer unban"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command.split(), "--help"])
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
    config = CoordinatorConfig(data_dir=tmp_path_factory.mktemp("coord"), port=0, publish=False,
                               # test_release_latest publishes made-up adapters, worse than the base model
                               publish_policy=PublishPolicy(max_eval_regression=1e9, max_base_regression=1e9))
    with Coordinator(config) as running:
        yield running


def launch(coordinator, *args):
    return runner.invoke(app, ["launch", "-c", coordinator.address,
                               "--operator-token-file", str(coordinator.operator_token_file), *args])


def test_launch_then_status(coordinator):
    result = launch(coordinator, "--name", "good", "--data-slices", "2")
    assert result.exit_code == 0, result.output
    assert "launched run 'good'" in result.output and "1800 train / 200 eval" in result.output
    status = runner.invoke(app, ["status", "-c", coordinator.address])
    assert "run good [active, join open]: base tiny, dataset sample, 1 shard(s), 0 live worker(s)" in status.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", "x1", "--base-model", "/no/such/model"], "no such directory"),
        (["--name", "x2", "--dataset", "/no/such/data.jsonl"], "has no dataset folders"),
        (["--name", "x3", "--shards", "9"], "cannot exceed the base model's number of layers (4)"),
        (["--name", "x4", "--batch-size-per-step", "16", "--target-batch-size", "8"], "target_batch_size (8)"),
        (["--name", "Bad Name"], "name"),
    ],
)
def test_launch_refuses_bad_input_and_stores_nothing(coordinator, args, message):
    result = launch(coordinator, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert args[1] not in {run.name for run in coordinator.storage.runs.list_runs()}


def test_relaunch_with_a_different_spec_keeps_the_original(coordinator):
    assert launch(coordinator, "--name", "keep", "--lr", "0.01").exit_code == 0
    before = coordinator.storage.runs.get_run("keep")
    result = launch(coordinator, "--name", "keep", "--lr", "0.5")
    assert result.exit_code == 2 and "already exists with a different spec" in result.output
    assert coordinator.storage.runs.get_run("keep") == before


def test_unreachable_coordinator_is_a_clear_error():
    result = runner.invoke(app, ["status", "-c", "127.0.0.1:1"])
    assert result.exit_code == 2 and "unreachable" in result.output


# a value for every RunSpec field, unlike its default; a new field fails the test below until it is listed here
EVERY_FIELD = {
    "--name": ("flags", "flags"), "--base-model": ("other", "other"), "--dataset": ("d.jsonl", "d.jsonl"),
    "--lora-rank": ("4", 4), "--lora-alpha": ("2.5", 2.5), "--lora-dropout": ("0.1", 0.1),
    "--lora-target-modules": ("q_proj, v_proj", ("q_proj", "v_proj")), "--shards": ("3", 3),
    "--batch-size-per-step": ("2", 2), "--target-batch-size": ("6", 6), "--optimizer": ("sgd", "sgd"),
    "--lr": ("0.5", 0.5), "--weight-decay": ("0.01", 0.01), "--seq-len": ("16", 16),
    "--eval-fraction": ("0.2", 0.2), "--data-slices": ("5", 5), "--publish-interval-s": ("7", 7.0),
    "--seed": ("9", 9), "--averaging-matchmaking-time": ("1.5", 1.5), "--averaging-averaging-timeout": ("8", 8.0),
    "--averaging-average-state-every": ("2", 2), "--averaging-progress-refresh-s": ("0.25", 0.25),
    "--parent": ("base@1", "base@1"),
    "--robustness-aggregator": ("median", "median"), "--robustness-trim-fraction": ("0.1", 0.1),
    "--robustness-clip-iterations": ("4", 4), "--robustness-clip-radius-factor": ("2", 2.0),
    "--robustness-max-norm-ratio": ("20", 20.0), "--robustness-max-step-lr-multiple": ("5", 5.0),
    "--robustness-max-epoch-lead": ("3", 3), "--robustness-ban-after-reports": ("7", 7),
    "--robustness-max-state-bytes": ("4096", 4096), "--robustness-max-version-change-ratio": ("30", 30.0),
    "--averaging-mode": ("local", "local"), "--averaging-outer-lr": ("0.5", 0.5),
    "--averaging-outer-momentum": ("0.8", 0.8), "--averaging-lora-factors": ("freeze_a", "freeze_a"),
    "--averaging-compression": ("8bit", "8bit"), "--averaging-overlap": (None, False),  # None: given as --no-...
    "--averaging-link-mbit": ("100", 100.0),
    "--data-format": ("instruction", "instruction"), "--train-on-prompts": (True, True),  # True: given as --x
    "--packing": (True, True),
}


@pytest.fixture
def launched_specs(monkeypatch):
    """The RunSpecs `swarm launch` sends, captured by a stand-in client."""
    import swarm.client

    sent = []

    class Client:
        def __init__(self, address):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            pass

        def launch_run(self, spec, **settings):
            sent.append(spec)
            return SimpleNamespace(run_name=spec.name, spec_hash=spec.content_hash, base_model_fingerprint="f",
                                   dataset_digest="d", train_samples=1, eval_samples=1)

    monkeypatch.setattr(swarm.client, "CoordinatorClient", Client)
    return sent


def test_every_runspec_field_has_a_flag_named_after_it(launched_specs):
    flags = {flag.flag: ".".join(flag.path) for flag in SPEC_FLAGS}
    assert set(flags) == set(EVERY_FIELD)
    assert all(flag == "--" + path.replace(".", "-").replace("_", "-") for flag, path in flags.items())
    args = [part for flag, (text, _) in EVERY_FIELD.items()
            for part in ((flag, text) if isinstance(text, str) else (flag,) if text else ("--no-" + flag[2:],))]
    result = runner.invoke(app, ["launch", *args])
    assert result.exit_code == 0, result.output
    spec = launched_specs[0].model_dump()
    for flag, (_, expected) in EVERY_FIELD.items():
        value = spec
        for key in flags[flag].split("."):
            value = value[key]
        assert value == expected, flag


def test_flags_override_a_toml_spec_without_lora_and_averaging_tables(tmp_path, launched_specs):
    (tmp_path / "run.toml").write_text('name = "from-file"\nlr = 0.02\nseed = 3\n')
    result = runner.invoke(app, ["launch", "--spec", str(tmp_path / "run.toml"), "--seed", "4", "--lora-rank", "2"])
    assert result.exit_code == 0, result.output
    expected = RunSpec(name="from-file", lr=0.02, seed=4, lora={"rank": 2})
    assert launched_specs == [expected]


def test_launch_from_a_toml_spec_with_only_top_level_fields(coordinator, tmp_path):
    (tmp_path / "run.toml").write_text('name = "toml-plain"\nshards = 2\ndata_slices = 2\n')
    result = launch(coordinator, "--spec", str(tmp_path / "run.toml"))
    assert result.exit_code == 0, result.output
    stored = RunSpec.from_json(coordinator.storage.runs.get_run("toml-plain").spec_json)
    assert stored == RunSpec(name="toml-plain", shards=2, data_slices=2)


def test_status_and_leaderboard_count_each_sample_once_with_compute_in_hours_minutes_and_utc_times(coordinator):
    """A donor training both shards of a run printed 192 samples: it sent a receipt per shard for each interval,
    and status and the leaderboard show 192 samples (384 sample-shards), compute as H:MM and times in UTC."""
    from datetime import datetime, timedelta, timezone

    from tests.storage_contract import receipt_of

    assert launch(coordinator, "--name", "units", "--shards", "2", "--data-slices", "2").exit_code == 0
    worker = coordinator.storage.runs.register_worker("units", "alice", "Alice", [0, 1], data_slice=0, device="cpu")
    start = datetime(2026, 12, 1, 14, 3, 0, tzinfo=timezone.utc)
    for interval in range(2):
        began = start + timedelta(seconds=60 * interval)
        for shard in (0, 1):
            coordinator.storage.ledger.add_receipt(receipt_of(
                worker, shard=shard, samples=96, compute_seconds=1800.0 / 4, status="verified", started_at=began,
                ended_at=began + timedelta(seconds=60), received_at=began + timedelta(seconds=61)))
    status = runner.invoke(app, ["status", "-c", coordinator.address, "--run", "units"])
    assert status.exit_code == 0, status.output
    assert "2 shard(s), 1 live worker(s), 192 samples trained (384 sample-shards)" in status.output
    assert "  shard 0: 1 worker(s), epoch 0, 192 samples" in status.output
    board = runner.invoke(app, ["leaderboard", "-c", coordinator.address, "--run", "units"])
    assert board.exit_code == 0, board.output
    assert "run units: 192 verified samples" in board.output
    [row] = [line for line in board.output.splitlines() if "Alice" in line]
    assert row.split()[3:] == ["192", "192", "0:30", "100.0%", "2026-12-01", "14:05", "UTC"], row
    assert "compute" in board.output and "compute h " not in board.output


def test_units_of_the_cli():
    from nomoat_cli.units import hours_minutes, utc_time

    assert [hours_minutes(h) for h in (0.0, 0.0168, 0.5, 1.0, 25.999, float("nan"))] == \
        ["0:00", "0:01", "0:30", "1:00", "26:00", "0:00"]
    assert utc_time("2026-12-01T14:05:09.51+01:00") == "2026-12-01 13:05 UTC"
    assert utc_time("2026-12-01T13:05:09") == "2026-12-01 13:05 UTC"
    assert (utc_time(""), utc_time("soon")) == ("", "soon")


LEAF_COMMANDS = ["coordinator", "launch", "donate", "pull", "release", "export", "status", "leaderboard", "demo",
                 "doctor", "token create", "token list", "token revoke", "run", "peer ban", "peer unban"]


@pytest.mark.parametrize("command", LEAF_COMMANDS)
def test_every_command_help_shows_an_example_and_defaults(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    example = result.output.split("Example:", 1)[1].strip().splitlines()[0]
    assert example.startswith(f"swarm {command} "), example
    assert "default: 127.0.0.1:50051" in " ".join(result.output.split()) or command in ("demo", "coordinator", "doctor")
    if command in ("coordinator", "donate", "demo", "pull", "launch"):
        assert len(re.findall(r"default: \S", result.output)) >= 3


def test_every_command_has_an_example():
    """A new command fails here until it is listed above (and so has an example)."""
    import typer.main

    def leaves(group, prefix: str = "") -> set[str]:
        return {name for command_name, command in group.commands.items()
                for name in (leaves(command, f"{prefix}{command_name} ") if hasattr(command, "commands")
                             else {prefix + command_name})}

    assert leaves(typer.main.get_command(app)) == set(LEAF_COMMANDS)


def test_version_and_shell_completion():
    from importlib.metadata import version

    shown = subprocess.run([sys.executable, "-m", "nomoat_cli", "--version"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and shown.stdout == f"swarm (nomoat) {version('nomoat')}\n", shown.stderr
    env = {**os.environ, "_SWARM_COMPLETE": "complete_bash", "COMP_WORDS": "swarm leader", "COMP_CWORD": "1"}
    completed = subprocess.run([sys.executable, "-m", "nomoat_cli"], capture_output=True, text=True, env=env,
                               timeout=60)
    assert completed.returncode == 0 and completed.stdout.split() == ["leaderboard"], completed.stderr
    script = subprocess.run([sys.executable, "-m", "nomoat_cli", "--show-completion", "bash"], capture_output=True,
                            text=True, timeout=60)
    assert script.returncode == 0 and "complete -o default -F _swarm_completion swarm" in script.stdout


def test_the_coordinator_address_comes_from_the_environment(coordinator):
    assert launch(coordinator, "--name", "envvar", "--data-slices", "2").exit_code == 0
    result = runner.invoke(app, ["status", "--run", "envvar"], env={"NOMOAT_COORDINATOR": coordinator.address})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("run envvar [active, join open]")
    assert "[env var: NOMOAT_COORDINATOR;" in " ".join(runner.invoke(app, ["status", "--help"]).output.split())


def test_an_address_without_a_port_dials_the_coordinators_default_port(coordinator, monkeypatch):
    import nomoat_cli.common
    from nomoat_cli.common import with_default_port

    assert with_default_port("coord.example.org") == "coord.example.org:50051"
    assert with_default_port("coord.example.org:443") == "coord.example.org:443"
    assert [with_default_port(a) for a in ("::1", "[::1]", "[::1]:7")] == ["[::1]:50051", "[::1]:50051", "[::1]:7"]
    assert launch(coordinator, "--name", "noport", "--data-slices", "2").exit_code == 0
    host, port = coordinator.address.rsplit(":", 1)
    monkeypatch.setattr(nomoat_cli.common, "COORDINATOR_PORT", int(port))  # this test's coordinator's port
    result = runner.invoke(app, ["status", "-c", host, "--run", "noport"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("run noport [active, join open]")


def _publish(coordinator, run: str, offset: float) -> None:
    """A version of ``run`` (LoRA values ``offset`` off the initial ones), as the publisher stores a swarm's."""
    runtime = coordinator.runs.get(run)
    tensors = {name: tensor + offset for name, tensor in runtime.initial_lora.items()}
    snapshots = [ShardSnapshot(shard, 1, "peer", {name: tensors[name] for name in names}, ("peer",))
                 for shard, names in enumerate(runtime.shard_names)]
    assert coordinator.publisher.publish_snapshots(runtime, snapshots).published


def test_release_latest_marks_the_newest_version(coordinator):
    def release(*args):
        return runner.invoke(app, ["release", "-c", coordinator.address, "--operator-token-file",
                                   str(coordinator.operator_token_file), "--run", "releasing", *args])

    assert launch(coordinator, "--name", "releasing", "--data-slices", "2").exit_code == 0
    none_yet = release("--version", "latest")
    assert none_yet.exit_code == 2 and "run 'releasing' has not published any version" in none_yet.output
    _publish(coordinator, "releasing", 0.01)
    _publish(coordinator, "releasing", 0.02)
    result = release("--version", "latest")
    assert result.exit_code == 0, result.output
    assert result.output == "releasing version 2 is a release\n"
    assert [v.release for v in coordinator.storage.versions.list_versions("releasing")] in ([False, True],
                                                                                           [True, False])
    assert coordinator.storage.versions.get_version("releasing", 2).release
    assert not coordinator.storage.versions.get_version("releasing", 1).release
    assert release("--version", "1").exit_code == 0 and coordinator.storage.versions.get_version("releasing", 1).release
    bad = release("--version", "newest")
    assert bad.exit_code == 2 and "--version is a version number or 'latest', not 'newest'" in bad.output


def test_a_busy_port_is_one_clear_line_and_leaves_no_data_dir(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data_dir = tmp_path / "coordinator"
        result = subprocess.run([sys.executable, "-m", "nomoat_cli", "coordinator", "--data-dir", str(data_dir),
                                 "--port", str(port)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr == (f"error: --port {port} on 127.0.0.1 is in use (another coordinator?): stop what "
                                 f"listens there or pass another --port\n")
        assert not data_dir.exists()
        dht = subprocess.run([sys.executable, "-m", "nomoat_cli", "coordinator", "--data-dir", str(data_dir),
                              "--port", "0", "--dht-port", str(port)], capture_output=True, text=True, timeout=120)
        assert dht.returncode == 2 and f"--dht-port {port} on 127.0.0.1 is in use" in dht.stderr
        assert len(dht.stderr.splitlines()) == 1 and not data_dir.exists()
