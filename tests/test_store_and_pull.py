"""The adapter store's atomicity and the pull client's verification, against a real coordinator and gRPC."""

import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from coordinator.adapter_store import PARTIAL_PREFIX, AdapterStore, StoreError
from coordinator.publisher import PublishPolicy, ShardSnapshot
from coordinator.server import Coordinator, CoordinatorConfig
from swarm.model import build_lora_model, build_tiny_model, lora_parameters
from swarm.pull import PullError, pull
from swarm.spec import RunSpec

SPEC = RunSpec(name="store-test", data_slices=2)


def lora_filled(fill: float, spec: RunSpec = SPEC) -> dict[str, torch.Tensor]:
    model = build_lora_model(build_tiny_model(), spec.lora, seed=spec.seed)
    with torch.no_grad():
        for param in lora_parameters(model).values():
            param.fill_(fill)
    return {name: param.detach().clone() for name, param in lora_parameters(model).items()}


def make_adapter_dir(path: Path, fill: float) -> Path:
    model = build_lora_model(build_tiny_model(), SPEC.lora, seed=SPEC.seed)
    with torch.no_grad():
        for param in lora_parameters(model).values():
            param.fill_(fill)
    model.save_pretrained(path)
    return path


@pytest.fixture()
def coordinator(tmp_path):
    # no quality gate here: these tests publish arbitrary adapters
    policy = PublishPolicy(max_eval_regression=1e9, max_base_regression=1e9)
    with Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False,
                                       publish_policy=policy)) as running:
        running.runs.launch(SPEC)
        yield running


def publish_tensors(coordinator, run_name: str, tensors: dict[str, torch.Tensor], epoch: int):
    """Publish through the real publisher (merge, eval, gate, signed manifest, store), as if every shard's peers
    had agreed on ``tensors`` at ``epoch``."""
    runtime = coordinator.runs.get(run_name)
    snapshots = [ShardSnapshot(shard, epoch, "peer", {name: tensors[name] for name in names}, ("peer",))
                 for shard, names in enumerate(runtime.shard_names)]
    return coordinator.publisher.publish_snapshots(runtime, snapshots)


def publish_by_hand(coordinator, fill: float, version: int):
    outcome = publish_tensors(coordinator, SPEC.name, lora_filled(fill), epoch=version)
    assert outcome.published and outcome.version.version == version, outcome.message
    return outcome.version


def test_pull_writes_a_stock_peft_adapter(coordinator, tmp_path):
    publish_by_hand(coordinator, 0.01, 1)
    publish_by_hand(coordinator, 0.02, 2)
    latest = pull(coordinator.address, SPEC.name, tmp_path / "out")
    assert latest.version == 2
    first = pull(coordinator.address, SPEC.name, tmp_path / "out1", version=1)
    assert first.version == 1 and first.sha256 != latest.sha256
    model = PeftModel.from_pretrained(build_tiny_model(), str(tmp_path / "out"))
    values = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert values and all(torch.allclose(v, torch.full_like(v, 0.02)) for v in values)


def test_pull_rejects_a_corrupted_file_and_writes_nothing(coordinator, tmp_path):
    record = publish_by_hand(coordinator, 0.01, 1)
    weights = Path(record.path) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PullError, match="failed verification"):
        pull(coordinator.address, SPEC.name, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".pull-*"))


def test_pull_of_missing_run_or_version_is_a_clear_error(coordinator, tmp_path):
    from swarm.client import CoordinatorError

    with pytest.raises(CoordinatorError, match="has not published"):
        pull(coordinator.address, SPEC.name, tmp_path / "out")
    with pytest.raises(CoordinatorError, match="no run named 'nope'"):
        pull(coordinator.address, "nope", tmp_path / "out")


def test_interrupted_store_write_leaves_previous_versions_intact(coordinator, tmp_path, monkeypatch):
    first = publish_by_hand(coordinator, 0.01, 1)
    broken = make_adapter_dir(tmp_path / "a2", 0.02)
    real_copy = shutil.copyfile
    calls = []

    def copy_then_fail(src, dst, *args, **kwargs):  # the "crash" strikes after the first file is written
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr("coordinator.adapter_store.shutil.copyfile", copy_then_fail)
    with pytest.raises(StoreError, match="No space left"):
        coordinator.store.put(SPEC.name, 2, broken)
    monkeypatch.undo()
    run_dir = coordinator.store.root / SPEC.name
    assert sorted(p.name for p in run_dir.iterdir()) == ["v000001"]
    assert coordinator.storage.versions.get_version(SPEC.name).version == 1
    assert pull(coordinator.address, SPEC.name, tmp_path / "out").sha256 == first.sha256


def test_partial_versions_from_a_crash_are_removed_on_start(tmp_path):
    store = AdapterStore(tmp_path / "store")
    store.put("run", 1, make_adapter_dir(tmp_path / "a1", 0.01))
    partial = tmp_path / "store" / "run" / f"{PARTIAL_PREFIX}000002-deadbeef"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"half")
    AdapterStore(tmp_path / "store")
    assert not partial.exists()
    assert (tmp_path / "store" / "run" / "v000001" / "adapter_config.json").exists()
