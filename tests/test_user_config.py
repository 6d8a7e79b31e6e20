"""~/.config/nomoat/config.toml: its defaults reach the commands below flags and environment variables, a real
`swarm status` finds its coordinator through it, and a file with an unknown key or a bad value is refused."""

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from coordinator.server import Coordinator, CoordinatorConfig
from nomoat_cli.app import _apply_user_config, app
from swarm.local_swarm import free_port
from swarm.paths import UserDirs
from swarm.user_config import UserConfig, UserConfigError, load_user_config

runner = CliRunner()


def write_config(text: str) -> Path:
    path = UserDirs.from_environment().user_config  # conftest points XDG_CONFIG_HOME at this test's folder
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def resolved(*names: str, args: tuple[str, ...] = ()) -> dict:
    """The parameters the command ``names`` (e.g. "token", "list") would run with given ``args``: parsed by the
    app's click commands, the config file applied by the app's own callback."""
    group = typer.main.get_command(app)
    context = group.make_context("swarm", [names[0]])
    _apply_user_config(context)
    command = group
    for index, name in enumerate(names):
        command = command.commands[name]  # type: ignore[attr-defined]
        rest = list(args) if index == len(names) - 1 else [names[index + 1]]
        context = command.make_context(name, rest, parent=context)
    return context.params


def test_precedence_flag_then_environment_then_file_then_default(monkeypatch, tmp_path):
    assert resolved("donate")["coordinator"] == "127.0.0.1:50051" and resolved("donate")["name"] == ""
    (tmp_path / "token.txt").write_text("tok-from-file\n")
    write_config(f'coordinator = "file.example.org"\nname = "alice"\ndevice = "cpu"\nidentity = "keys/me.key"\n'
                 f'join_token_file = "{tmp_path / "token.txt"}"\n')
    donate = resolved("donate")
    assert (donate["coordinator"], donate["name"], donate["device"], donate["join_token"]) == (
        "file.example.org", "alice", "cpu", "tok-from-file")
    assert donate["identity"] == UserDirs.from_environment().config / "keys" / "me.key"  # beside config.toml
    assert resolved("token", "list", args=("--run", "r"))["coordinator"] == "file.example.org"  # nested commands too
    assert resolved("launch")["name"] is None  # a run's name: the donor's display name does not apply
    monkeypatch.setenv("NOMOAT_COORDINATOR", "env.example.org")
    monkeypatch.setenv("NOMOAT_JOIN_TOKEN", "tok-from-env")
    assert resolved("status")["coordinator"] == "env.example.org" and resolved("status")["join_token"] == "tok-from-env"
    flags = resolved("donate", args=("-c", "flag.example.org", "--name", "bob", "--device", "auto"))
    assert (flags["coordinator"], flags["name"], flags["device"]) == ("flag.example.org", "bob", "auto")


def test_swarm_status_reaches_the_coordinator_named_in_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("NOMOAT_COORDINATOR", raising=False)
    config = CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False)
    with Coordinator(config) as coordinator:
        launched = runner.invoke(app, ["launch", "-c", coordinator.address, "--name", "configured",
                                       "--operator-token-file", str(coordinator.operator_token_file)])
        assert launched.exit_code == 0, launched.output
        write_config(f'coordinator = "{coordinator.address}"\n')
        status = runner.invoke(app, ["status"])
        assert status.exit_code == 0, status.output
        assert "run configured [" in status.output
        dead = f"127.0.0.1:{free_port()}"  # the environment wins over the file: nobody answers there
        status = runner.invoke(app, ["status"], env={"NOMOAT_COORDINATOR": dead})
        assert status.exit_code == 2 and dead in status.output and "run configured" not in status.output


@pytest.mark.parametrize("text, message", [
    ('coordinatr = "x"\n', "unknown key 'coordinatr' (known keys: coordinator,"),
    ('device = "gpu"\n', "'device' is auto, cpu, cuda or cuda:N, not 'gpu'"),
    ('name = 3\n', "'name' must be a string, not int"),
    ('name = "\n', "is not valid TOML"),
])
def test_a_bad_file_is_refused_naming_the_file_and_the_key(text, message):
    path = write_config(text)
    with pytest.raises(UserConfigError, match="config file .*") as refused:
        load_user_config(path)
    assert str(path) in str(refused.value) and message in str(refused.value)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_no_file_is_no_defaults(tmp_path):
    assert load_user_config(tmp_path / "missing.toml") == UserConfig()
