"""README.md's commands, run for real: every command of its ```bash blocks is parsed, its placeholders are replaced
by an explicit table (SUBSTITUTIONS), and it runs against real coordinators and donors, in README order.

A block that starts a coordinator begins a new session (what the commands after it talk to): the earlier
session's donors and coordinators are stopped with SIGTERM, as README says, and must exit 0; each session starts
from the test's environment (exports last for a session). A donor is stopped the same way once it has trained
(and, for `myrun`, once a version of it is published), so that it does not slow the next commands down. Long-running commands run with limits (coordinators
and donors in the background; a donor gets --max-seconds). A command with no handler fails
test_every_readme_command_has_a_handler: a README command added without coverage fails the suite.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nomoat_cli.app import app
from nomoat_cli.launch import SPEC_FLAGS
from swarm.client import CoordinatorClient, Endpoint
from swarm.credentials import read_operator_token
from swarm.local_swarm import free_port
from swarm.spec import RunSpec, load_spec_file
from swarm.tls import ensure_certificate

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE_SPEC = ROOT / "docs" / "example-run.toml"
CLI = [sys.executable, "-m", "nomoat_cli"]
# the whole runbook (three coordinators, two donors, ~30 commands) on two shared cores takes a few minutes
pytestmark = pytest.mark.timeout(600)

# Commands that are not run, and why (install commands, the suite itself, the one-machine script that starts
# four processes). Matched on the command's first words.
EXEMPT = {
    ("python3", "-m", "venv"): "creates a virtual environment: the test runs inside one already",
    (".venv/bin/pip", "install"): "installs packages from the network: the test runs with them installed",
    (".venv/bin/python", "-m", "mypy"): "the type check, run by .ci/run",
    (".venv/bin/python", "-m", "pytest"): "the test suite itself, which this module is part of",
    ("deploy/start_swarm.sh", "all"): "a coordinator and 3 donors until Ctrl-C: its pieces (coordinator, launch, "
                                      "donate) are the commands run here; not run on the 2 shared cores",
    ("deploy/start_swarm.sh", "coordinator"): "not run: its workers need a run launched by hand on it; it runs "
                                              "`swarm coordinator --host 0.0.0.0 --announce-host IP --dht-port "
                                              "31337`, options the public-coordinator block runs",
    ("deploy/start_swarm.sh", "worker"): "not run: it needs the script's coordinator (above); it runs `swarm donate "
                                         "--host 0.0.0.0 --announce-host IP` (run by the volunteer block) or "
                                         "`--client-mode`",
}
# Commands that another test runs (test name: what it checks).
COVERED_ELSEWHERE = {
    ("swarm", "demo"): "test_readme.py::test_swarm_demo_runs_with_limits",
}
# The run whose donor is stopped once it trained an epoch: the pull after it gets the version its hand-over published
HANDED_OVER = "house-bot"
# Commands run by a handler below, by first words.
RUN_HERE = [("export",), ("mkdir",), ("cp",), ("swarm",)]


def readme_commands(text: str) -> list[tuple[int, list[list[str]]]]:
    """The ```bash blocks of ``text``: (block number, commands), a command being one logical line's words
    (``\\`` continuations joined, ``#`` comments dropped) with ``&&`` chains split into their parts."""
    blocks = []
    for number, body in enumerate(re.findall(r"^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE)):
        commands = []
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
        blocks.append((number, commands))
    return blocks


def normalized(words: list[str]) -> list[str]:
    """``.venv/bin/swarm`` is ``swarm``."""
    return ["swarm", *words[1:]] if words[0] == ".venv/bin/swarm" else words


def rule_of(words: list[str]) -> str:
    words = normalized(words)
    for table, kind in ((EXEMPT, "exempt"), (COVERED_ELSEWHERE, "elsewhere")):
        if any(tuple(words[:len(prefix)]) == prefix for prefix in table):
            return kind
    if any(tuple(words[:len(prefix)]) == prefix for prefix in RUN_HERE):
        return "run"
    return ""


def test_every_readme_command_has_a_handler():
    commands = [words for _, block in readme_commands(README.read_text()) for words in block]
    assert len(commands) > 30
    missing = [" ".join(words) for words in commands if not rule_of(words)]
    assert not missing, f"README commands no test runs (add a handler in tests/test_readme.py): {missing}"


def this_host_address() -> str:
    """An IPv4 address of this machine that is not loopback (clients dial it over TLS, as a remote one would)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # UDP: picks the outgoing interface, sends nothing
        address = probe.getsockname()[0]
    except OSError:
        address = ""
    finally:
        probe.close()
    if not address or ipaddress.ip_address(address).is_loopback:
        pytest.skip("this machine has no non-loopback IPv4 address: README's public-coordinator and TLS commands "
                    "need one (a client dialling loopback speaks plaintext)")
    return address


@dataclass
class Background:
    """A coordinator or donor started by a README command."""

    kind: str
    words: list[str]
    process: subprocess.Popen
    log: Path
    address: str = ""
    fingerprint: str = ""
    data_dir: Path | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as README says to stop it; then reap what it left in its process group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.process.returncode


@dataclass
class Runbook:
    """Runs README's commands in order, keeping what later commands need (addresses, fingerprints, tokens)."""

    tmp: Path
    host_ip: str
    base_env: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    running: list[Background] = field(default_factory=list)
    stopped: list[tuple[Background, int]] = field(default_factory=list)
    coordinators: dict[str, Background] = field(default_factory=dict)  # placeholder host -> its coordinator
    results: list[tuple[str, int, str]] = field(default_factory=list)  # command, exit code, output
    join_token: str = ""
    cert: tuple[Path, Path] | None = None

    @property
    def home(self) -> Path:
        return Path(self.base_env["HOME"])

    @property
    def work(self) -> Path:
        return self.tmp / "work"

    def substitutions(self) -> dict[str, str]:
        """Placeholder -> what it is here, longest first (applied inside every word)."""
        table = {
            "HOST:50051": self.coordinators["HOST"].address if "HOST" in self.coordinators else "HOST:50051",
            "coord.example.org:50051": (self.coordinators["coord.example.org"].address
                                        if "coord.example.org" in self.coordinators else "coord.example.org:50051"),
            "/etc/letsencrypt/live/coord.example.org/fullchain.pem": str(self.certificate()[0]),
            "/etc/letsencrypt/live/coord.example.org/privkey.pem": str(self.certificate()[1]),
            "postgresql+psycopg://nomoat:secret@127.0.0.1/nomoat": f"sqlite:///{self.tmp / 'public.db'}",
            "coord.example.org": self.host_ip, "198.51.100.7": self.host_ip,
            "/srv/nomoat": str(self.tmp / "srv"), "docs/example-run.toml": str(EXAMPLE_SPEC),
            "docs/example-chats.jsonl": str(ROOT / "docs" / "example-chats.jsonl"),
            "sha256:...": self.latest_fingerprint(),
        }
        return dict(sorted(table.items(), key=lambda item: -len(item[0])))

    def certificate(self) -> tuple[Path, Path]:
        """The operator's own certificate for the TLS block: made here for this machine's address, and trusted
        by clients as if a CA in the system's roots had signed it (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH)."""
        if self.cert is None:
            folder = self.tmp / "letsencrypt"
            ensure_certificate(folder, hosts=[self.host_ip])
            self.cert = (folder / "cert.pem", folder / "key.pem")
            assert all(path.is_file() for path in self.cert), list(folder.iterdir())
        return self.cert

    def latest_fingerprint(self) -> str:
        printed = [c.fingerprint for c in self.coordinators.values() if c.fingerprint]
        return printed[-1] if printed else "sha256:..."

    def substitute(self, words: list[str]) -> list[str]:
        table = self.substitutions()
        out = []
        for index, word in enumerate(words):
            if word == "T" and index and words[index - 1] == "--join-token":  # the token `token create` printed
                out.append(self.join_token)
                continue
            if word.startswith("~/"):
                word = f"{self.home}{word[1:]}"
            word = word.replace("=~/", f"={self.home}/")
            for placeholder, value in table.items():
                word = word.replace(placeholder, value)
            out.append(word)
        return out

    # sessions

    def new_session(self) -> None:
        for background in self.running:
            self.stopped.append((background, background.stop()))
        self.running.clear()
        self.coordinators.clear()
        self.env = dict(self.base_env)

    def close(self) -> None:
        self.new_session()

    # running one command

    def run(self, words: list[str]) -> None:
        words = normalized(words)
        kind = rule_of(words)
        if kind != "run":
            self.results.append((" ".join(words), 0, f"not run here: {kind}"))
            return
        words = self.substitute(words)
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            self.env[name] = value
            self.results.append((" ".join(words), 0, ""))
        elif words[0] in ("mkdir", "cp"):
            done = subprocess.run(words, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=30)
            self.results.append((" ".join(words), done.returncode, done.stdout + done.stderr))
        elif words[:2] == ["swarm", "coordinator"] and "--help" not in words:
            self.start_coordinator(words)
        elif words[:2] == ["swarm", "donate"] and "--help" not in words:
            self.start_donor(words)
        else:
            self.cli(words)

    def cli(self, words: list[str]) -> None:
        """A swarm command that ends by itself, in this process (the same Typer app as the `swarm` executable),
        or in a child process when it must read the system's CA roots (gRPC reads those once per process)."""
        if "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH" in self.env:
            done = subprocess.run(CLI + words[1:], cwd=self.work, env=self.env, capture_output=True, text=True,
                                  timeout=120)
            result = (done.returncode, done.stdout + done.stderr)
        else:
            invoked = CliRunner().invoke(app, words[1:], env=self.session_overrides())
            result = (invoked.exit_code, invoked.output)
        self.results.append((" ".join(words), *result))
        if words[1:3] == ["token", "create"] and result[0] == 0:
            self.join_token = result[1].strip().splitlines()[-1]

    def session_overrides(self) -> dict[str, str | None]:
        """The session's environment for an in-process command (CliRunner sets these and restores them)."""
        overrides: dict[str, str | None] = {name: value for name, value in self.env.items()
                                            if os.environ.get(name) != value}
        overrides.update({name: None for name in os.environ if name not in self.env})
        return overrides

    def spawn(self, kind: str, args: list[str], name: str) -> Background:
        log = self.tmp / f"{name}.log"
        process = subprocess.Popen(args, cwd=self.work, env=self.env, stdout=log.open("ab"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        background = Background(kind, args, process, log)
        self.running.append(background)
        return background

    def start_coordinator(self, words: list[str]) -> None:
        """A new session: the coordinator in the background, on free ports (50051 and 31337 may be taken on a
        shared machine), until it prints its key."""
        words = [*words, "--port", str(free_port())]
        if "--dht-port" in words:
            words[words.index("--dht-port") + 1] = str(free_port())
        placeholder = "coord.example.org" if self.host_ip in words else "HOST"
        if "--tls-cert" in words:
            self.env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(self.certificate()[0])
        coordinator = self.spawn("coordinator", CLI + words[1:], f"coordinator{len(self.stopped)}")
        deadline = time.monotonic() + 120
        while not re.search(r"^coordinator key", coordinator.output(), re.MULTILINE):
            assert coordinator.process.poll() is None and time.monotonic() < deadline, coordinator.output()
            time.sleep(0.2)
        text = coordinator.output()
        coordinator.address = re.search(r"^coordinator: (\S+)$", text, re.MULTILINE).group(1)
        pinned = re.search(r"^TLS certificate fingerprint: (sha256:[0-9a-f]{64})$", text, re.MULTILINE)
        coordinator.fingerprint = pinned.group(1) if pinned else ""
        token_file = re.search(r"^operator token file .*: (\S+)$", text, re.MULTILINE).group(1)
        coordinator.data_dir = Path(token_file).parent
        self.coordinators[placeholder] = coordinator
        self.results.append((" ".join(words), 0, text))

    def operator_endpoint(self, coordinator: Background) -> Endpoint:
        return Endpoint(coordinator.address, fingerprint=coordinator.fingerprint or None,
                        operator_token=read_operator_token(coordinator.data_dir / "operator.token"))

    def start_donor(self, words: list[str]) -> None:
        """The donor in the background with a time limit; the command is done once it joined (and, for the run
        the next commands pull, once a version of what it trained is published)."""
        for donor in [b for b in self.running if b.kind == "donor"]:  # one identity key: one donor at a time
            self.running.remove(donor)
            self.stopped.append((donor, donor.stop()))
        run = words[words.index("--run") + 1]
        donor = self.spawn("donor", CLI + words[1:] + ["--max-seconds", "240", "--no-progress"],
                           f"donor{len(self.stopped)}")
        [coordinator] = list(self.coordinators.values())
        deadline = time.monotonic() + 180
        with CoordinatorClient(self.operator_endpoint(coordinator)) as client:
            while True:
                assert donor.process.poll() is None and time.monotonic() < deadline, donor.output()[-3000:]
                state = client.status(run).runs[0]
                if run == HANDED_OVER and all(shard.epoch >= 1 for shard in state.shard_status):
                    break  # it trained an epoch: stopped, it hands its final state over and a version is published
                if run not in ("myrun", HANDED_OVER) and client.leaderboard(run, include_unverified=True).total_samples:
                    break  # it trained (its DHT peer is up) and its receipts arrived
                if run == "myrun" and all(shard.epoch >= 1 for shard in state.shard_status):
                    published = client.publish_now(run)
                    if published.published or state.versions:
                        break
                time.sleep(0.5)
        # stopped now (README: Ctrl-C or SIGTERM leaves cleanly; checked in test_stopping_with_sigterm_exits_cleanly),
        # so that it does not slow the commands after it down on a machine of two cores
        self.running.remove(donor)
        self.stopped.append((donor, donor.stop()))
        self.results.append((" ".join(words), 0, f"joined run {run}"))


@pytest.fixture(scope="module")
def runbook(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    (tmp / "work").mkdir()
    (tmp / "home").mkdir()
    # the dataset the public-coordinator block copies in (README: "cp stories.jsonl ...")
    (tmp / "work" / "stories.jsonl").write_text("".join(f'{{"text": "story {i}: ada has {i} kites."}}\n'
                                                        for i in range(64)))
    base_env = {name: value for name, value in os.environ.items()
                if name not in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME") and not name.startswith("NOMOAT_")}
    base_env.update(HOME=str(tmp / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                    PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    book = Runbook(tmp, this_host_address(), base_env)
    book.env = dict(base_env)
    saved_cwd = os.getcwd()
    os.chdir(book.work)  # ./adapter, ./hf-repo: relative to where the commands run
    try:
        for _, commands in readme_commands(README.read_text()):
            if any(words[:2] == ["swarm", "coordinator"] and "--help" not in words for words in commands):
                book.new_session()  # a block that starts a coordinator: its exports are that session's
            for words in commands:
                started = time.monotonic()
                book.run(words)
                with (tmp / "timings.txt").open("a") as timings:
                    timings.write(f"{time.monotonic() - started:6.1f}s  {' '.join(words)}\n")
                command, code, output = book.results[-1]
                assert code == 0, f"README command failed: {command}\n{output[-3000:]}"
        yield book
    finally:
        os.chdir(saved_cwd)
        book.close()


def output_of(runbook: Runbook, *parts: str) -> str:
    """The output of the first command that holds all of ``parts``."""
    outputs = [output for command, _, output in runbook.results if all(part in command for part in parts)]
    return outputs[0] if outputs else ""


def test_every_readme_command_runs(runbook):
    """Each ran with exit code 0 (the fixture asserts it as it goes); then what they wrote and said is checked."""
    home, work = runbook.home, runbook.work
    assert (work / "adapter" / "adapter_config.json").is_file()
    assert (work / "adapter" / "adapter_model.safetensors").is_file()
    assert (work / "hf-repo" / "README.md").is_file()
    # version 1 from publish_now, and the donor's hand-over at its SIGTERM may have published version 2
    assert re.search(r"pulled myrun version [12] ", output_of(runbook, "swarm pull"))
    assert "pulled house-bot version 1" in output_of(runbook, "swarm pull", "house-bot")  # the donor's hand-over
    assert (work / "house-bot" / "adapter_model.safetensors").is_file()
    assert "precisions on cpu: fp32, bf16" in output_of(runbook, "swarm doctor")
    assert "round trip" in output_of(runbook, "swarm doctor") and "download rate" in output_of(runbook, "swarm doctor")
    assert re.search(r"myrun version [12] is a release", output_of(runbook, "swarm release"))
    assert "launched run 'example'" in output_of(runbook, "swarm launch", "--spec")
    assert "launched run 'stories'" in output_of(runbook, "swarm launch", "--name stories")
    assert "run homerun is removed" in output_of(runbook, "swarm run remove")
    assert "run myrun is stopped" in output_of(runbook, "swarm run stop")
    assert "join token 1 of run teamrun revoked" in output_of(runbook, "swarm token revoke")
    assert output_of(runbook, "swarm --version").startswith("swarm (nomoat) ")
    assert "Example:" in output_of(runbook, "swarm donate --help")
    # README's "Where files live": the default places, under this test's home folder
    config = home / ".config" / "nomoat"
    assert (config / "identity.key").is_file() and list(config.glob("outbox-*.sqlite"))
    assert (config / "known_coordinators.json").is_file() and (config / "seen_versions.json").is_file()
    assert list((home / ".cache" / "nomoat" / "adapters").iterdir())
    data_dir = home / ".nomoat" / "coordinator"
    for name in ("coordinator.db", "operator.token", "dht_identity.key", "store", "datasets", "coordinator.lock"):
        assert (data_dir / name).exists(), name
    assert (runbook.tmp / "srv" / "coordinator" / "tls").is_dir()  # the public one made a self-signed certificate
    assert (runbook.tmp / "public.db").is_file()  # NOMOAT_DB_URL was used


def test_stopping_with_sigterm_exits_cleanly(runbook):
    """README "Stopping": SIGTERM stops a donor (with its summary line) and a coordinator, with exit code 0."""
    stopped = list(runbook.stopped)
    assert {background.kind for background, _ in stopped} >= {"coordinator", "donor"}
    for background, code in stopped:
        assert code == 0, f"{background.kind} {' '.join(background.words)} exited {code}:\n{background.output()[-3000:]}"
        if background.kind == "donor" and "--max-seconds" in background.words:
            assert "stopped by interrupted" in background.output()


def test_the_example_spec_launches_with_its_values(runbook):
    """docs/example-run.toml: every key is a RunSpec field with a `swarm launch` flag of that name, and the run
    README launches from it holds exactly the file's values."""
    fields = tomllib.loads(EXAMPLE_SPEC.read_text())
    flags = {flag.flag for flag in SPEC_FLAGS}
    for key, value in fields.items():
        for name in (value if isinstance(value, dict) else {None: value}):
            flag = "--" + "-".join(part for part in (key, name) if part).replace("_", "-")
            assert flag in flags, flag
    main_data_dir = runbook.home / ".nomoat" / "coordinator"
    connection = sqlite3.connect(f"file:{main_data_dir / 'coordinator.db'}?mode=ro", uri=True)
    try:
        [(spec_json,)] = connection.execute("select spec_json from runs where name = 'example'").fetchall()
    finally:
        connection.close()
    launched = RunSpec.from_json(spec_json)
    assert launched == load_spec_file(EXAMPLE_SPEC)
    dumped = launched.model_dump(mode="json")
    for key, value in fields.items():
        if isinstance(value, dict):
            assert {name: dumped[key][name] for name in value} == value, key
        else:
            assert dumped[key] == value, key


def test_swarm_demo_runs_with_limits(tmp_path):
    """README's `swarm demo`, shortened: one worker, one shard, 20 s of training (the default is 2 workers for
    60 s); it publishes two versions, pulls one and prints the eval loss of base model and adapter. It keeps its
    files in its own folder: the user's config and cache folders are as they were (its donor does not read the
    user's config.toml either), and the trusted coordinator key, the pull cache and the identity are the demo's."""
    workdir = tmp_path / "demo"
    config_home, cache_home = tmp_path / "home-config", tmp_path / "home-cache"
    (config_home / "nomoat").mkdir(parents=True)
    user_config = 'device = "cuda:7"\n'  # a donor that read the user's config.toml would fail on this machine
    (config_home / "nomoat" / "config.toml").write_text(user_config)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "XDG_CONFIG_HOME": str(config_home),
           "XDG_CACHE_HOME": str(cache_home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(CLI + ["demo", "--workers", "1", "--seconds", "20", "--shards", "1", "--workdir",
                                 str(workdir)], capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"eval loss on the held-out split: base model [0-9.]+ -> with the swarm's adapter [0-9.]+",
                     done.stdout), done.stdout
    assert (workdir / "coordinator.log").is_file() and (workdir / "worker0.log").is_file()
    assert sorted(p.relative_to(config_home).as_posix() for p in config_home.rglob("*")) == [
        "nomoat", "nomoat/config.toml"]
    assert (config_home / "nomoat" / "config.toml").read_text() == user_config and not cache_home.exists()
    demo_user = workdir / "user-config" / "nomoat"
    assert (demo_user / "known_coordinators.json").is_file() and (demo_user / "seen_versions.json").is_file()
    assert list((workdir / "user-cache" / "nomoat" / "adapters").iterdir())
    assert sorted(p.name for p in workdir.glob("worker*.key")) == ["worker0.key"]
