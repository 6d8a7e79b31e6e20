"""Pull hardening and secrets on disk: manifest validation, the rules of ``--out``, what a puller remembers, and
the modes of keys, databases and the files beside them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import typer

from coordinator.server import Coordinator, CoordinatorConfig
from nomoat_cli.serve import DB_URL_VARIABLE, database_url
from swarm.export import ExportError, export_hf_repo
from swarm.identity import IdentityError, load_or_create_identity
from swarm.manifest import Manifest, ManifestError, SignedManifest
from swarm.output_folder import OUTPUT_MARKER, OutputFolderError, write_output_folder
from swarm.paths import UserDirs
from swarm.private_files import private_folder, write_private_file
from swarm.pull import pull
from tests.coordinator_process import CoordinatorProcess
from tests.test_store_and_pull import SPEC, coordinator, publish_by_hand  # noqa: F401  (coordinator: a fixture)
from worker.outbox import Outbox


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# Manifests: every field checked before anything is trusted

def good_manifest_data(identity) -> dict:
    manifest = Manifest(run="demo", version=3, spec_hash="sha256:ab", base_model="tiny", base_model_fingerprint="f",
                        epoch=5, samples=40, eval_loss=4.5, base_eval_loss=5.0, contributors=("QmA",),
                        files=(), created_at="2026-12-01T00:00:00+00:00", coordinator=identity.peer_id)
    data = json.loads(manifest.to_bytes())
    data["files"] = [{"name": "adapter_model.safetensors", "size": 10, "sha256": "a" * 64}]
    return data


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return load_or_create_identity(tmp_path_factory.mktemp("signer") / "key")


def signed(data: dict, identity) -> SignedManifest:
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return SignedManifest(payload, identity.public_key_der, identity.sign(payload))


BAD_FILE = {"name": "adapter_model.safetensors", "size": 10, "sha256": "a" * 64}


@pytest.mark.parametrize("change, refusal", [
    ({"files": [{**BAD_FILE, "name": "../x"}]}, "unsafe file"),
    ({"files": [{**BAD_FILE, "name": "/etc/x"}]}, "unsafe file"),
    ({"files": [{**BAD_FILE, "name": "a\\b"}]}, "unsafe file"),
    ({"files": [{**BAD_FILE, "name": "x\n"}]}, "unsafe file"),
    ({"files": [{**BAD_FILE, "name": ".hidden"}]}, "unsafe file"),
    ({"files": [{**BAD_FILE, "name": "nomoat_manifest.json"}]}, "unsafe file"),
    ({"files": [BAD_FILE, BAD_FILE]}, "twice"),
    ({"files": [{**BAD_FILE, "size": "10"}]}, "size of .* is not an integer"),
    ({"files": [{**BAD_FILE, "size": 1.5}]}, "size of .* is not an integer"),
    ({"files": [{**BAD_FILE, "size": -1}]}, "size of .* is not an integer"),
    ({"files": [{**BAD_FILE, "size": 2 ** 40 * 100}]}, "size of .* is not an integer"),
    ({"files": [{**BAD_FILE, "sha256": "xyz"}]}, "not a sha256"),
    ({"files": [{**BAD_FILE, "extra": 1}]}, "not {name, size, sha256}"),
    ({"files": {"adapter_model.safetensors": BAD_FILE}}, "files is not a list"),
    ({"files": []}, "lists no files"),
    ({"version": True}, "version is not an integer"),
    ({"version": "3"}, "version is not an integer"),
    ({"epoch": -1}, "epoch is not an integer"),
    ({"contributors": "QmA"}, "contributors is not a list"),
    ({"contributors": [1]}, "contributors\\[\\] is not a string"),
    ({"run": ["demo"]}, "run is not a string"),
    ({"run": "a/../../../tmp/evil"}, "run is not a run name"),
    ({"chain": [{"run": "../x", "version": 1, "sha256": "a" * 64}]}, "chain\\[\\].run is not a run name"),
    ({"base_model": "x" * 5000}, "base_model is not a string"),
    ({"eval_loss": "4.5"}, "eval_loss is not a finite number"),
    ({"chain": [{"run": "p", "version": 0, "sha256": "a" * 64}]}, "chain\\[\\].version"),
    ({"parent": "p@1"}, "parent is not"),
    ({"surprise": 1}, "unknown \\['surprise'\\]"),
])
def test_a_signed_manifest_with_a_bad_field_or_file_name_is_refused(signer, change, refusal):
    data = good_manifest_data(signer)
    assert signed(data, signer).verify(signer.peer_id).version == 3  # the unchanged one is fine
    with pytest.raises(ManifestError, match=refusal):
        signed({**data, **change}, signer).verify(signer.peer_id)


# --out: never a user's file lost

def fill_with(**files: str):
    def write(staging: Path) -> None:
        for name, text in files.items():
            (staging / name).write_text(text)
    return write


def test_out_refuses_a_user_folder_and_force_keeps_every_user_file(tmp_path):
    out = tmp_path / "project"
    (out / "src").mkdir(parents=True)
    (out / "src" / "main.py").write_text("mine")
    with pytest.raises(OutputFolderError, match=f"{out} is not empty .* --force"):
        write_output_folder(out, fill_with(a="1"))
    assert sorted(p.name for p in out.iterdir()) == ["src"]
    write_output_folder(out, fill_with(a="1", b="2"), force=True)
    assert (out / "src" / "main.py").read_text() == "mine" and (out / "a").read_text() == "1"
    # over an earlier output: its own entries are replaced or removed, the user's are kept
    (out / "notes").write_text("mine too")
    write_output_folder(out, fill_with(a="3"))
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "a", "notes", "src"]
    assert (out / "a").read_text() == "3"
    # a user's file of the same name as a new entry needs --force; a user's folder is never replaced
    with pytest.raises(OutputFolderError, match="notes was not written by the earlier pull"):
        write_output_folder(out, fill_with(notes="pulled"))
    with pytest.raises(OutputFolderError, match="src is a folder that swarm did not write"):
        write_output_folder(out, fill_with(src="pulled"), force=True)
    assert (out / "notes").read_text() == "mine too" and (out / "src" / "main.py").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".nomoat-staging")]


def test_out_that_is_missing_or_empty_is_written_whole(tmp_path):
    write_output_folder(tmp_path / "new", fill_with(a="1"))
    (tmp_path / "empty").mkdir()
    write_output_folder(tmp_path / "empty", fill_with(a="1"))
    for folder in (tmp_path / "new", tmp_path / "empty"):
        assert json.loads((folder / OUTPUT_MARKER).read_text())["entries"] == ["a"]


def test_export_into_a_user_folder_is_refused_and_force_keeps_the_users_files(coordinator, tmp_path):  # noqa: F811
    record = publish_by_hand(coordinator, 0.01, 1)
    out = tmp_path / "repo"
    out.mkdir()
    (out / "my-notes.md").write_text("mine")
    with pytest.raises(ExportError, match=f"{out} is not empty .* --force"):
        export_hf_repo(Path(record.path), out)
    assert [p.name for p in out.iterdir()] == ["my-notes.md"]
    export_hf_repo(Path(record.path), out, force=True)
    assert (out / "my-notes.md").read_text() == "mine" and (out / "README.md").exists()
    export_hf_repo(Path(record.path), out)  # over an earlier export: no --force needed
    assert (out / "my-notes.md").read_text() == "mine"


# Secrets on disk

def test_a_created_key_is_0600_in_a_0700_folder_and_a_readable_key_is_refused(tmp_path):
    key = tmp_path / "config" / "nomoat" / "identity.key"
    identity = load_or_create_identity(key)
    assert mode(key) == 0o600 and mode(key.parent) == 0o700 and mode(key.parent.parent) == 0o700
    assert load_or_create_identity(key).peer_id == identity.peer_id
    assert not [p for p in key.parent.iterdir() if p.name != "identity.key"]  # no temporary file left
    key.chmod(0o644)
    with pytest.raises(IdentityError, match=f"mode 0644.*run: chmod 600 {key}"):
        load_or_create_identity(key)


def test_private_files_are_0600_even_under_a_permissive_umask(tmp_path):
    previous = os.umask(0)
    try:
        write_private_file(tmp_path / "a" / "secret", b"x")
        private_folder(tmp_path / "b" / "c")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "a" / "secret") == 0o600 and mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "b") == 0o700 and mode(tmp_path / "b" / "c") == 0o700


def test_coordinator_db_wal_shm_key_and_peer_book_are_0600(tmp_path, monkeypatch):
    data_dir = tmp_path / "coord"
    monkeypatch.setattr("coordinator.server.connected_peer_addresses", lambda dht: ["/ip4/127.0.0.1/tcp/1/p2p/Qm"])
    with Coordinator(CoordinatorConfig(data_dir=data_dir, port=0, publish=False)) as running:
        running.runs.launch(SPEC)
        running._save_peer_book()
        for name in ("coordinator.db", "coordinator.db-wal", "coordinator.db-shm", "dht_identity.key",
                     "dht_peers.json"):
            assert mode(data_dir / name) == 0o600, name
    assert mode(data_dir) == 0o700


def test_an_existing_world_readable_db_is_made_0600(tmp_path):
    data_dir = tmp_path / "coord"
    data_dir.mkdir()
    (data_dir / "coordinator.db").touch(mode=0o644)
    (data_dir / "coordinator.db").chmod(0o644)
    with Coordinator(CoordinatorConfig(data_dir=data_dir, port=0, publish=False)):
        assert mode(data_dir / "coordinator.db") == 0o600


def test_the_worker_outbox_is_0600(tmp_path):
    import time

    from swarm.receipts import sign_receipt
    from tests.test_ledger import _receipt

    alice = load_or_create_identity(tmp_path / "alice.key")
    outbox = Outbox(tmp_path / "config" / "outbox.sqlite", "127.0.0.1:1")
    outbox.put(sign_receipt(_receipt(alice, time.time() - 20), alice))
    for name in ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm"):
        assert mode(tmp_path / "config" / name) == 0o600, name
    outbox.close()


def test_what_a_puller_remembers_is_0600(coordinator, tmp_path):  # noqa: F811  (the fixture)
    publish_by_hand(coordinator, 0.01, 1)
    pull(coordinator.address, SPEC.name, tmp_path / "out")
    dirs = UserDirs.from_environment()
    assert mode(dirs.known_coordinators) == 0o600 and mode(dirs.seen_versions) == 0o600
    assert json.loads(dirs.seen_versions.read_text()) == {coordinator.identity.peer_id: {SPEC.name: 1}}


def test_the_db_url_comes_from_the_environment_or_a_private_file(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert database_url(None, None, {DB_URL_VARIABLE: url}) == url
    assert database_url(None, None, {}) is None
    url_file = tmp_path / "db-url"
    write_private_file(url_file, (url + "\n").encode())
    assert database_url(None, url_file, {DB_URL_VARIABLE: "ignored"}) == url
    url_file.chmod(0o644)
    with pytest.raises(typer.Exit):
        database_url(None, url_file, {})
    assert f"chmod 600 {url_file}" in capsys.readouterr().err
    assert database_url("postgresql://nomoat:hunter2@db/nomoat", None, {}).endswith("@db/nomoat")
    assert "--db holds a password" in capsys.readouterr().err
    # and `swarm coordinator` uses it: its database is created there, 0600, not in the data dir
    process = CoordinatorProcess(tmp_path / "coord", env={DB_URL_VARIABLE: url}).start()
    try:
        assert mode(tmp_path / "elsewhere.db") == 0o600
        assert not (tmp_path / "coord" / "coordinator.db").exists()
    finally:
        process.stop()
