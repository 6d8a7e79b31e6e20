"""Run runtimes: a run is built once (its dataset taken into the coordinator's vault, its base model loaded once and
reused by every publish), and a run that cannot be rebuilt leaves the coordinator and every other run serving."""

import sqlite3
import threading

import pytest
import torch

import coordinator.runtime as runtime_module
from coordinator.dataset_vault import DatasetVault
from coordinator.publisher import PublishPolicy, ShardSnapshot
from coordinator.runtime import RunRuntimes, RunUnavailableError
from coordinator.server import Coordinator, CoordinatorConfig
from coordinator.storage import Storage
from swarm.client import CoordinatorClient, CoordinatorError
from swarm.data import DatasetError, dataset_digest
from swarm.evaluation import eval_loss
from swarm.identity import load_or_create_identity
from swarm.model import build_lora_model, build_tiny_model, hub_revision, lora_parameters
from swarm.spec import RunSpec

LINES = [f"line {i} of the operator's file" for i in range(40)]


def random_lora(spec: RunSpec, seed: int) -> dict[str, torch.Tensor]:
    model = build_lora_model(build_tiny_model(), spec.lora, seed=spec.seed)
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(param.shape, generator=generator) * 0.05
            for name, param in lora_parameters(model).items()}


def fresh_eval_loss(spec: RunSpec, runtime, tensors: dict[str, torch.Tensor] | None) -> float:
    """What the publisher measured before runtimes: a newly loaded base model with a newly built LoRA."""
    model = build_lora_model(build_tiny_model(), spec.lora, seed=spec.seed)
    if tensors is not None:
        with torch.no_grad():
            for name, param in lora_parameters(model).items():
                param.copy_(tensors[name])
    return eval_loss(model, runtime.split.eval, runtime.tokenizer, spec.seq_len)


@pytest.fixture()
def count_base_loads(monkeypatch):
    loads = []
    real = runtime_module.load_base_model

    def counting(name, revision=None):
        loads.append(name if revision is None else f"{name}@{revision}")
        return real(name, revision=revision)

    monkeypatch.setattr(runtime_module, "load_base_model", counting)
    return loads


def test_the_publisher_loads_the_base_model_once_per_run_across_publishes(tmp_path, count_base_loads):
    spec = RunSpec(name="once", data_slices=2, shards=2)
    config = CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False,
                               publish_policy=PublishPolicy(max_eval_regression=1e9, max_base_regression=1e9))
    with Coordinator(config) as coordinator:
        runtime = coordinator.runs.launch(spec)
        base_loss = coordinator.publisher.base_eval_loss(runtime)
        for version in (1, 2, 3):
            tensors = random_lora(spec, seed=version)
            snapshots = [ShardSnapshot(shard, version, "peer", {name: tensors[name] for name in names}, ("peer",))
                         for shard, names in enumerate(runtime.shard_names)]
            outcome = coordinator.publisher.publish_snapshots(runtime, snapshots)
            assert outcome.published, outcome.message
            # the reused model gives exactly what a freshly loaded one gives: nothing of the last publish is left
            assert outcome.version.eval_loss == pytest.approx(fresh_eval_loss(spec, runtime, tensors), abs=1e-6)
            assert outcome.version.base_eval_loss == base_loss
        with runtime.evaluation_model(None) as model:  # back to the untrained LoRA: exactly the base model
            assert eval_loss(model, runtime.split.eval, runtime.tokenizer, spec.seq_len) == pytest.approx(
                fresh_eval_loss(spec, runtime, None), abs=1e-6)
        assert count_base_loads == ["tiny"]
        assert coordinator.runs.get(spec.name) is runtime


def test_concurrent_first_requests_build_a_run_once(tmp_path, count_base_loads):
    storage = Storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    vault = DatasetVault(tmp_path / "datasets")
    RunRuntimes(storage, vault).launch(RunSpec(name="shared", data_slices=2))
    assert count_base_loads == ["tiny"]
    restarted = RunRuntimes(storage, vault)
    results, barrier = [], threading.Barrier(4)

    def first_request():
        barrier.wait()
        results.append(restarted.get("shared"))

    threads = [threading.Thread(target=first_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(result is results[0] for result in results)
    assert count_base_loads == ["tiny", "tiny"]  # one at launch, one after the "restart"
    storage.close()


def test_a_launched_dataset_is_kept_by_digest_and_the_source_file_no_longer_matters(tmp_path):
    dataset = tmp_path / "notes.txt"
    dataset.write_text("\n".join(LINES))
    config = CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False, dataset_dirs=(tmp_path,))
    spec = RunSpec(name="from-file", dataset="notes.txt", data_slices=1, eval_fraction=0.1)
    with Coordinator(config) as coordinator:
        launched = coordinator.runs.launch(spec)
        served_before = sorted(launched.split.train)
    assert (tmp_path / "coord" / "datasets" / f"{dataset_digest(LINES).split(':')[1]}.jsonl").is_file()
    dataset.write_text("something else entirely\nand more")  # the operator edits the file, then deletes it
    dataset.unlink()
    with Coordinator(config) as coordinator:
        with CoordinatorClient(coordinator.address) as client:
            assignment = client.join(load_or_create_identity(tmp_path / "worker.key"), spec.name, "worker")
            assert sorted(client.data_slice(spec.name, 0, assignment.worker_id)) == served_before
            assert not client.status(spec.name).runs[0].unavailable


def test_one_broken_run_leaves_the_coordinator_and_the_other_runs_serving(tmp_path):
    config = CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False, dataset_dirs=(tmp_path,))
    (tmp_path / "notes.txt").write_text("\n".join(LINES))
    healthy = RunSpec(name="healthy", data_slices=2)
    broken = RunSpec(name="broken", data_slices=2, dataset=str(tmp_path / "notes.txt"))  # absolute, inside
    with Coordinator(config) as coordinator:
        coordinator.runs.launch(healthy)
        record = coordinator.runs.launch(broken).record
    # the broken run's stored data is altered behind the coordinator's back
    stored = DatasetVault(tmp_path / "coord" / "datasets").path_of(record.dataset_digest)
    stored.write_text(stored.read_text().replace("line 3 ", "line 33 "))

    with Coordinator(config) as coordinator:
        assert set(coordinator.runs.unavailable()) == {"broken"}
        with pytest.raises(RunUnavailableError, match="altered"):
            coordinator.runs.get("broken")
        with CoordinatorClient(coordinator.operator_endpoint()) as client:
            runs = {run.run_name: run for run in client.status().runs}
            assert runs.keys() == {"healthy", "broken"}
            assert "altered" in runs["broken"].unavailable and not runs["healthy"].unavailable
            identity = load_or_create_identity(tmp_path / "worker.key")
            assignment = client.join(identity, "healthy", "worker")
            assert assignment.run_name == "healthy" and client.data_slice("healthy", assignment.data_slice,
                                                                          assignment.worker_id)
            with pytest.raises(CoordinatorError, match="run 'broken' is unavailable"):
                client.join(identity, "broken", "worker")
            with pytest.raises(CoordinatorError, match="not a live registration of run 'broken'"):
                client.data_slice("broken", 0, assignment.worker_id)
            assert client.launch_run(RunSpec(name="later", data_slices=2)).run_name == "later"  # still launches


def test_the_vault_refuses_a_missing_or_altered_dataset(tmp_path):
    vault = DatasetVault(tmp_path / "vault")
    digest = vault.put(["one", "two"])
    assert vault.put(["one", "two"]) == digest and vault.get(digest) == ["one", "two"]
    with pytest.raises(DatasetError, match="not in the coordinator's dataset store"):
        vault.get(dataset_digest(["three"]))
    with pytest.raises(DatasetError, match="not a dataset digest"):
        vault.path_of("sha256:../../etc/passwd")
    vault.path_of(digest).write_text('{"text": "one"}\n')
    with pytest.raises(DatasetError, match="altered"):
        vault.get(digest)


def test_a_runs_pinned_hub_revision_is_what_a_restart_loads(tmp_path, count_base_loads):
    storage = Storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    vault = DatasetVault(tmp_path / "datasets")
    record = RunRuntimes(storage, vault).launch(RunSpec(name="pinned", data_slices=2)).record
    assert record.base_model_revision is None  # the preset has no revision to pin
    pinned = "0123456789abcdef0123456789abcdef01234567"
    storage.close()
    with sqlite3.connect(tmp_path / "db.sqlite") as db:  # as if launched from a Hub id that resolved to this commit
        db.execute("update runs set base_model_revision = ? where name = 'pinned'", (pinned,))
    storage = Storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    restarted = RunRuntimes(storage, vault).get("pinned")
    assert restarted.record.base_model_revision == pinned
    assert count_base_loads == ["tiny", f"tiny@{pinned}"]
    storage.close()


def test_hub_revision_pins_hub_ids_only(tmp_path):
    model = build_tiny_model()
    model.config._commit_hash = "0123456789abcdef0123456789abcdef01234567"
    assert hub_revision("someorg/some-model", model) == model.config._commit_hash
    assert hub_revision("tiny", model) is None
    model.save_pretrained(tmp_path / "local")
    assert hub_revision(str(tmp_path / "local"), model) is None
