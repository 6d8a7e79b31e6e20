"""A Hub model id that cannot be loaded fails in seconds with what to do (it waited 52 s without network), and a
cached one still loads with the Hub out of reach. Nothing is downloaded: the Hub endpoint is a local socket that
takes connections and never answers (a link that hangs), and the "cached" model is the tiny preset written into a
Hugging Face cache layout."""

import os
import socket
import subprocess
import sys
import time

from typer.testing import CliRunner

from coordinator.server import Coordinator, CoordinatorConfig
from nomoat_cli.app import app

MISSING = "nomoat-test/no-such-model"
SCRIPT = f"""
import sys, time
from pathlib import Path
from swarm.model import ModelLoadError, base_model_fingerprint, build_tiny_model, load_base_model
from swarm.tokenizer import ByteTokenizer

snapshot = Path(sys.argv[1]) / "hub" / "models--nomoat-test--cached" / "snapshots" / ("0" * 40)
build_tiny_model().save_pretrained(snapshot)
ByteTokenizer().as_transformers().save_pretrained(snapshot)
(snapshot.parents[1] / "refs").mkdir()
(snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
started = time.monotonic()
try:
    load_base_model({MISSING!r})
except ModelLoadError as exc:
    print("refused in", round(time.monotonic() - started, 1), "s:", exc)
model, tokenizer = load_base_model("nomoat-test/cached")
assert base_model_fingerprint(model) == base_model_fingerprint(build_tiny_model())
print("cached model loaded:", tokenizer.encode("ab"))
"""


def test_with_the_hub_out_of_reach_a_missing_model_fails_fast_and_a_cached_one_loads(tmp_path):
    silent = socket.socket()  # listens, never accepts: connections are made, requests never answered
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    hub = f"http://127.0.0.1:{silent.getsockname()[1]}"
    env = {name: value for name, value in os.environ.items()
           if name not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and "proxy" not in name.lower()}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub)
    try:
        result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "hf")], env=env, capture_output=True,
                                text=True, timeout=120)
    finally:
        silent.close()
    assert result.returncode == 0, result.stdout + result.stderr
    refused, loaded = result.stdout.strip().splitlines()
    seconds = float(refused.split()[2])
    assert seconds < 10, refused  # one 3 s request, not huggingface_hub's retries
    assert (f"unknown base model '{MISSING}': not the 'tiny' preset, not a local model directory, and not in the "
            f"local Hugging Face cache ({tmp_path / 'hf' / 'hub'}), and the Hugging Face Hub cannot be reached: "
            f"{hub} cannot be reached (timed out)") in refused
    assert "give the folder of a downloaded copy as the base model" in refused
    assert loaded == "cached model loaded: [97, 98]"
    assert "loading 'nomoat-test/cached' from the local cache" in result.stderr


def test_launch_of_an_uncached_hub_model_offline_is_refused_at_once(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: tests never reach the Hub
    with Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False)) as coordinator:
        started = time.monotonic()
        result = CliRunner().invoke(app, ["launch", "-c", coordinator.address, "--name", "offline",
                                          "--base-model", MISSING,
                                          "--operator-token-file", str(coordinator.operator_token_file)])
        elapsed = time.monotonic() - started
        assert result.exit_code == 2, result.output
        assert f"unknown base model '{MISSING}'" in result.output
        assert "not in the local Hugging Face cache" in result.output
        assert "and HF_HUB_OFFLINE is set: unset it to download the model" in result.output
        assert elapsed < 10 and coordinator.storage.runs.list_runs() == []
