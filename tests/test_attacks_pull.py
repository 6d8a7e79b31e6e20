"""The pull attacks of issue 10, against a real coordinator process, through a hostile gRPC proxy on the path:
trust on first use before verification, a downgrade to an old "latest", ``--out`` deleting a user's files, and
manifests naming files outside the cache. Each is refused with a clear error; the user's files stay intact,
the coordinator stays up and its database unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.publisher import PublishPolicy
from coordinator.server import Coordinator, CoordinatorConfig
from swarm.identity import load_or_create_identity
from swarm.manifest import SignedManifest
from swarm.paths import UserDirs
from swarm.pull import PullError, pull
from swarm.spec import RunSpec
from tests.coordinator_process import CoordinatorProcess
from tests.hostile_proxy import HostileProxy, resign
from tests.test_store_and_pull import lora_filled, publish_tensors

SPEC = RunSpec(name="attacked", data_slices=2)
VERSIONS = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A coordinator process serving versions 1..3 of SPEC (published in-process on the same data dir first)."""
    data_dir = tmp_path_factory.mktemp("attacked") / "coordinator"
    config = CoordinatorConfig(data_dir=data_dir, port=0, publish=False,
                               publish_policy=PublishPolicy(max_eval_regression=1e9, max_base_regression=1e9))
    with Coordinator(config) as setup:
        setup.runs.launch(SPEC)
        for version in range(1, VERSIONS + 1):
            outcome = publish_tensors(setup, SPEC.name, lora_filled(0.01 * version, SPEC), epoch=version)
            assert outcome.published, outcome.message
    process = CoordinatorProcess(data_dir).start()
    before = process.db_snapshot()
    yield process
    assert process.alive(), process.log()
    assert process.db_snapshot() == before
    process.stop()


@pytest.fixture()
def proxy(served):
    with HostileProxy(served.address) as running:
        yield running


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def known_coordinators() -> dict:
    path = UserDirs.from_environment().known_coordinators
    return json.loads(path.read_text()) if path.exists() else {}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "nomoat_cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def test_a_tampered_first_contact_pins_nothing_and_the_genuine_coordinator_is_accepted_after(served, proxy,
                                                                                           tmp_path):
    attacker = load_or_create_identity(tmp_path / "attacker.key")
    # 1. the attacker's key in front of the genuine manifest and signature: the signature does not hold
    proxy.forge = lambda payload: (payload, SignedManifest(payload, attacker.public_key_der, b"\0" * 256)
                                   .signature_json())
    with pytest.raises(PullError, match="signature does not match"):
        pull(proxy.address, SPEC.name, tmp_path / "out")
    # 2. a manifest the attacker signed itself, then weights changed on the way: the files do not verify
    proxy.forge, proxy.corrupt = (lambda payload: resign(payload, attacker)), {"adapter_model.safetensors"}
    with pytest.raises(PullError, match="adapter_model.safetensors hashes to .* tampered"):
        pull(proxy.address, SPEC.name, tmp_path / "out")
    assert proxy.address not in known_coordinators()  # before the fix: the attacker's key, pinned for good
    assert not (tmp_path / "out").exists()

    proxy.honest()
    pulled = pull(proxy.address, SPEC.name, tmp_path / "out")
    assert pulled.version == VERSIONS and pulled.manifest.coordinator == served.peer_id
    assert known_coordinators()[proxy.address] == served.peer_id
    # and now the attacker's key is the one refused at this address
    proxy.forge = lambda payload: resign(payload, attacker)
    kept = files_of(tmp_path / "out")
    with pytest.raises(PullError, match=f"not by the trusted coordinator {served.peer_id}"):
        pull(proxy.address, SPEC.name, tmp_path / "out")
    assert files_of(tmp_path / "out") == kept


def test_an_old_version_served_as_latest_is_refused_naming_both_versions(served, proxy, tmp_path):
    out = tmp_path / "adapter"
    assert pull(proxy.address, SPEC.name, out).version == VERSIONS
    kept = files_of(out)
    proxy.latest_as = 1  # a stale mirror, or a replay of an old, genuinely signed answer
    downgrade = rf"version 1 of '{SPEC.name}' as the latest, but version {VERSIONS} .* --version 1"
    with pytest.raises(PullError, match=downgrade):
        pull(proxy.address, SPEC.name, out)
    with pytest.raises(PullError, match=downgrade):  # the key is the right one: --trust does not help it
        pull(proxy.address, SPEC.name, out, trusted_signer=served.peer_id)
    # the highest version is remembered per signer, not per address: another address is caught too
    with HostileProxy(served.address) as mirror:
        mirror.latest_as = 2
        with pytest.raises(PullError, match=rf"version 2 of '{SPEC.name}' as the latest, but version {VERSIONS}"):
            pull(mirror.address, SPEC.name, tmp_path / "mirror")
    refused = cli("pull", "-c", proxy.address, "--run", SPEC.name, "--out", str(out), "--trust", served.peer_id)
    assert refused.returncode != 0 and "refusing a downgrade" in refused.stderr, refused.stderr
    assert files_of(out) == kept and not (tmp_path / "mirror").exists()
    # asking for the old version on purpose is allowed, and does not lower what was seen
    assert pull(proxy.address, SPEC.name, tmp_path / "old", version=1).version == 1
    proxy.honest()
    assert pull(proxy.address, SPEC.name, out).version == VERSIONS


def test_pull_out_into_a_project_folder_never_deletes_its_files(served, tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('my work')\n")
    (project / "notes.txt").write_text("do not lose me\n")
    mine = files_of(project)

    with pytest.raises(PullError, match=rf"{project} is not empty .* --force"):
        pull(served.address, SPEC.name, project)
    refused = cli("pull", "-c", served.address, "--run", SPEC.name, "--out", ".", cwd=project)
    assert refused.returncode != 0 and "--force" in refused.stderr, refused.stderr
    assert files_of(project) == mine  # before the fix: src/main.py and notes.txt were gone

    forced = cli("pull", "-c", served.address, "--run", SPEC.name, "--out", ".", "--version", "1", "--force",
                 cwd=project)
    assert forced.returncode == 0, forced.stderr
    assert (project / "adapter_model.safetensors").exists()
    assert {name: data for name, data in files_of(project).items() if name in mine} == mine
    # a later pull over the earlier one needs no --force, replaces what the pull wrote, keeps the rest
    (project / "later.txt").write_text("added after the pull\n")
    assert pull(served.address, SPEC.name, project).version == VERSIONS
    after = files_of(project)
    assert after["src/main.py"] == mine["src/main.py"] and after["notes.txt"] == mine["notes.txt"]
    assert after["later.txt"] == b"added after the pull\n"
    assert json.loads(after["nomoat_version.json"])["version"] == VERSIONS


@pytest.mark.parametrize("files, refusal", [
    ([{"name": "../x", "size": 4, "sha256": "0" * 64}], "unsafe file"),
    ([{"name": "/etc/x", "size": 4, "sha256": "0" * 64}], "unsafe file"),
    ([{"name": "x", "size": "4", "sha256": "0" * 64}], "size of x is not an integer"),
])
def test_a_manifest_naming_files_outside_the_cache_is_refused_and_nothing_is_written(proxy, tmp_path, files,
                                                                                     refusal):
    hostile = load_or_create_identity(tmp_path / "hostile.key")  # a hostile coordinator: its own key, first contact
    proxy.forge = lambda payload: resign(payload, hostile, files=files)
    proxy.files = {entry["name"]: b"evil" for entry in files}
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(PullError, match=refusal):
        pull(proxy.address, SPEC.name, tmp_path / "out", cache_dir=cache)
    assert not (tmp_path / "out").exists() and not (tmp_path / "deep" / "x").exists()
    assert not cache.exists() or not any(cache.rglob("*"))
    assert proxy.address not in known_coordinators()


def test_a_file_the_manifest_does_not_list_is_refused_and_never_copied(proxy, tmp_path):
    hostile = load_or_create_identity(tmp_path / "hostile.key")
    proxy.forge = lambda payload: resign(payload, hostile)
    proxy.files = {"run-me.sh": b"#!/bin/sh\nrm -rf ~\n"}
    cache = tmp_path / "cache"
    with pytest.raises(PullError, match="'run-me.sh', which the manifest does not list"):
        pull(proxy.address, SPEC.name, tmp_path / "out", cache_dir=cache)
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("run-me.sh"))
