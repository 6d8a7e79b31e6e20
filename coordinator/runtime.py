"""One object per run, built once: the run's spec, data split, shard layout and its base model, loaded when the
run is launched or when the coordinator starts, and shared by the service, ledger, publisher and progress
watcher.

A run's inputs are taken in at launch: its samples are read from the operator's dataset folders (never from a
path of the requester's choosing) into the coordinator's dataset vault (by digest), and its base model is pinned
by fingerprint (and, for a Hugging Face Hub id, by the commit it resolved to). A restart rebuilds every run from
the vault, each in isolation: a run that cannot be rebuilt (its base model changed, its stored data is gone) is
marked unavailable with the reason, and every other run is served as before.

Usage::

    runs = RunRuntimes(storage, DatasetVault(data_dir / "datasets"), DatasetSources([Path("/srv/datasets")]))
    runs.load_all()                      # at start, before serving
    runtime = runs.launch(spec)          # LaunchError with a readable message on bad input; nothing stored then
    runtime = runs.get("demo")           # UnknownRunError, or RunUnavailableError with the reason
    with runtime.evaluation_model(tensors) as model: ...   # the base model (loaded once) with these LoRA values
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel

from coordinator.dataset_sources import DatasetSources
from coordinator.dataset_vault import DatasetVault
from coordinator.storage import RunExistsError, RunRecord, RunSettings, Storage, UnknownRunError
from swarm.data import DatasetError, DatasetSplit, dataset_digest, load_texts, split_dataset
from swarm.log import get_logger
from swarm.manifest import ChainLink, Manifest
from swarm.merge import MergeError, apply_adapter_chain
from swarm.model import (ModelLoadError, base_model_fingerprint, build_lora_model, hub_revision, load_base_model,
                         lora_parameters)
from swarm.shards import ShardError, partition_parameters
from swarm.samples import TrainingSample
from swarm.spec import RunSpec, SpecError, parse_version_ref
from swarm.training_data import answers_cut_away, render_dataset
from swarm.tokenizer import TextTokenizer

logger = get_logger(__name__)


class LaunchError(ValueError):
    """A run could not be launched; nothing was stored."""


class RunUnavailableError(RuntimeError):
    """The run exists but could not be loaded on this coordinator; the message says why."""


@dataclass
class RunRuntime:
    """Everything the coordinator holds in memory for one run. Built by ``RunRuntimes`` only."""

    record: RunRecord
    spec: RunSpec
    split: DatasetSplit
    shard_names: list[list[str]]
    shard_shapes: list[list[tuple[int, ...]]]
    tokenizer: TextTokenizer
    chain: tuple[ChainLink, ...]  # published versions merged into the base before this run's LoRA, root first
    chain_paths: tuple[Path, ...]  # where the store keeps them
    model: PeftModel = field(repr=False)  # base + chain + the run's LoRA; use through evaluation_model()
    initial_lora: dict[str, torch.Tensor] = field(repr=False)  # the seeded LoRA values (B = 0: exactly the base)
    _model_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @contextmanager
    def evaluation_model(self, lora: dict[str, torch.Tensor] | None = None) -> Iterator[PeftModel]:
        """The run's model holding ``lora`` (every LoRA tensor by name; None: the untrained LoRA, i.e. the base
        model itself), for exclusive use inside the block. The base weights are never reloaded."""
        values = self.initial_lora if lora is None else lora
        with self._model_lock:
            params = lora_parameters(self.model)
            missing = set(params) - set(values)
            if missing:
                raise ValueError(f"{len(missing)} LoRA tensors missing, e.g. {sorted(missing)[0]}")
            with torch.no_grad():
                for name, param in params.items():
                    tensor = values[name]
                    if tuple(param.shape) != tuple(tensor.shape):
                        raise ValueError(f"{name}: got shape {tuple(tensor.shape)}, the run has {tuple(param.shape)}")
                    param.copy_(tensor)
            yield self.model


@dataclass(frozen=True)
class _BuiltModel:
    fingerprint: str  # of the base model before any parent is merged in
    revision: str | None  # the Hub commit it was loaded at (None: the preset or a local folder)
    model: PeftModel
    tokenizer: TextTokenizer
    shard_names: list[list[str]]
    shard_shapes: list[list[tuple[int, ...]]]
    chain: tuple[ChainLink, ...]
    chain_paths: tuple[Path, ...]


def resolve_parent_chain(storage: Storage, spec: RunSpec) -> tuple[tuple[ChainLink, ...], tuple[Path, ...]]:
    """The published versions a stacked run builds on (its parent's own chain, then the parent), with their
    store paths; LaunchError with the reason when the parent cannot be stacked on."""
    if spec.parent is None:
        return (), ()
    try:
        parent_run, parent_version = parse_version_ref(spec.parent)
        parent_spec = RunSpec.from_json(storage.runs.get_run(parent_run).spec_json)
    except (SpecError, UnknownRunError) as exc:
        raise LaunchError(f"parent {spec.parent}: {exc}") from None
    record = storage.versions.get_version(parent_run, parent_version)
    if record is None:
        raise LaunchError(f"parent {spec.parent}: run '{parent_run}' has not published version {parent_version}")
    if record.collected_at is not None:
        raise LaunchError(f"parent {spec.parent}: that version was removed by retention")
    if record.manifest is None:
        raise LaunchError(f"parent {spec.parent} was published without a signed manifest; stack on a newer version")
    if parent_spec.base_model != spec.base_model:
        raise LaunchError(f"parent {spec.parent} was trained on base model '{parent_spec.base_model}', "
                          f"this run names '{spec.base_model}'")
    manifest = Manifest.from_bytes(record.manifest.encode())
    links = (*manifest.chain, manifest.link)
    paths = []
    for link in links:
        stored = storage.versions.get_version(link.run, link.version)
        if stored is None or stored.collected_at is not None or stored.sha256 != link.sha256:
            raise LaunchError(f"parent chain of {spec.parent}: {link} is missing or changed in the store")
        paths.append(Path(stored.path))
    return links, tuple(paths)


def _build_model(storage: Storage, spec: RunSpec, revision: str | None = None) -> _BuiltModel:
    """Load the run's base model (once; at its pinned Hub ``revision`` after launch), merge its parent chain in,
    add its LoRA, and lay out its shards."""
    chain, chain_paths = resolve_parent_chain(storage, spec)
    base, tokenizer = load_base_model(spec.base_model, revision=revision)
    fingerprint, revision = base_model_fingerprint(base), revision or hub_revision(spec.base_model, base)
    try:
        base = apply_adapter_chain(base, chain_paths)
    except MergeError as exc:
        raise LaunchError(f"parent chain of {spec.parent} does not apply to {spec.base_model}: {exc}") from None
    model = build_lora_model(base, spec.lora, seed=spec.seed)
    model.eval()
    num_layers = int(getattr(base.config, "num_hidden_layers", 1))
    names = lora_parameters(model)
    shard_names = partition_parameters(list(names), num_layers, spec.shards)
    shard_shapes = [[tuple(names[name].shape) for name in shard] for shard in shard_names]
    return _BuiltModel(fingerprint, revision, model, tokenizer, shard_names, shard_shapes, chain, chain_paths)


def _runtime(record: RunRecord, spec: RunSpec, split: DatasetSplit, built: _BuiltModel) -> RunRuntime:
    initial = {name: param.detach().clone() for name, param in lora_parameters(built.model).items()}
    return RunRuntime(record, spec, split, built.shard_names, built.shard_shapes, built.tokenizer, built.chain,
                      built.chain_paths, built.model, initial)


class RunRuntimes:
    """Every run's runtime, each built at most once per coordinator process (concurrent callers wait for the
    one load), and the reason for every run that could not be built."""

    def __init__(self, storage: Storage, datasets: DatasetVault, sources: DatasetSources = DatasetSources()):
        self.storage, self.datasets, self.sources = storage, datasets, sources
        self._runtimes: dict[str, RunRuntime] = {}
        self._unavailable: dict[str, str] = {}
        self._guard = threading.Lock()  # protects the two dicts and the per-run locks
        self._run_locks: dict[str, threading.Lock] = {}

    def _run_lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._run_locks.setdefault(name, threading.Lock())

    def launch(self, spec: RunSpec, settings: RunSettings = RunSettings()) -> RunRuntime:
        """Take the run's inputs in and store it: its samples into the dataset vault, its base model loaded and
        fingerprinted, its LoRA laid out in shards. Idempotent for the exact same spec; a different spec under an
        existing name is refused."""
        with self._run_lock(spec.name):
            try:
                existing: RunRecord | None = self.storage.runs.get_run(spec.name)
            except UnknownRunError:
                existing = None
            if existing is not None:
                if existing.spec_hash == spec.content_hash:
                    return self._get_locked(spec.name)
                raise LaunchError(f"run '{spec.name}' already exists with a different spec ({existing.spec_hash})")
            try:  # the rows are checked before the base model loads: bad data is refused quickly
                parsed = self.sources.parse(spec.dataset, spec.data_format)
                built = _build_model(self.storage, spec)
                texts, formatting = render_dataset(parsed, built.tokenizer, spec.train_on_prompts, spec.packing)
            except (DatasetError, ModelLoadError, ShardError) as exc:
                raise LaunchError(str(exc)) from None
            cut = answers_cut_away(texts, built.tokenizer, spec.seq_len)
            if cut:
                logger.warning("run %s: %d of %d samples have no answer token within seq_len %d; they add nothing "
                               "to training or eval", spec.name, cut, len(texts), spec.seq_len)
            split = split_dataset(texts, spec.eval_fraction, spec.seed)
            if len(split.train) < spec.data_slices:
                raise LaunchError(
                    f"dataset has {len(split.train)} train samples, fewer than data_slices ({spec.data_slices})"
                )
            digest = self.datasets.put(texts, formatting)
            try:
                record = self.storage.runs.create_run(spec.name, spec.to_json(), spec.content_hash, built.fingerprint,
                                                      digest, settings, base_model_revision=built.revision)
            except RunExistsError as exc:
                raise LaunchError(str(exc)) from None
            runtime = _runtime(record, spec, split, built)
            with self._guard:
                self._runtimes[spec.name] = runtime
            logger.info("launched run %s (%d train / %d eval %s samples, template %s, %d shards)", spec.name,
                        len(split.train), len(split.eval), formatting.data_format, formatting.template, spec.shards)
            return runtime

    def load_all(self) -> None:
        """Build every stored run that is not built yet, each in isolation; a failure marks only that run."""
        for record in self.storage.runs.list_runs():
            try:
                self.get(record.name)
            except RunUnavailableError:
                pass  # logged and kept with its reason

    def get(self, name: str) -> RunRuntime:
        """The run's runtime (built now if this process has not built it yet). UnknownRunError when no such run
        was launched; RunUnavailableError when it could not be built."""
        with self._guard:
            if name in self._runtimes:
                return self._runtimes[name]
        with self._run_lock(name):
            return self._get_locked(name)

    def _get_locked(self, name: str) -> RunRuntime:
        with self._guard:
            if name in self._runtimes:
                return self._runtimes[name]
            if name in self._unavailable:
                raise RunUnavailableError(f"run '{name}' is unavailable: {self._unavailable[name]}")
        record = self.storage.runs.get_run(name)  # UnknownRunError
        try:
            runtime = self._rebuild(record)
        except Exception as exc:  # anything at all: one broken run must never take the others down
            reason = str(exc) or exc.__class__.__name__
            logger.error("run %s cannot be served: %s", name, reason)
            with self._guard:
                self._unavailable[name] = reason
            raise RunUnavailableError(f"run '{name}' is unavailable: {reason}") from None
        with self._guard:
            self._runtimes[name] = runtime
        return runtime

    def _rebuild(self, record: RunRecord) -> RunRuntime:
        spec = RunSpec.from_json(record.spec_json)
        texts = self._stored_texts(record, spec)
        built = _build_model(self.storage, spec, revision=record.base_model_revision)
        if built.fingerprint != record.base_model_fingerprint:
            raise LaunchError(f"base model '{spec.base_model}' is not the one the run was launched with "
                              f"(fingerprint {built.fingerprint}, launched with {record.base_model_fingerprint})")
        logger.info("loaded run %s", spec.name)
        return _runtime(record, spec, split_dataset(texts, spec.eval_fraction, spec.seed), built)

    def _stored_texts(self, record: RunRecord, spec: RunSpec) -> list[TrainingSample]:
        """The run's samples from the vault. Runs launched before the vault existed take their file in once
        more, if it still holds exactly what was launched."""
        if self.datasets.has(record.dataset_digest):
            return self.datasets.get(record.dataset_digest)
        texts: list[TrainingSample] = list(load_texts(spec.dataset))
        if dataset_digest(texts) != record.dataset_digest:
            raise DatasetError(f"dataset {spec.dataset} changed since launch and the run has no stored copy")
        self.datasets.put(texts)
        logger.info("run %s: dataset %s taken into the dataset vault", spec.name, spec.dataset)
        return texts

    def forget(self, name: str, reason: str = "removed by the operator") -> None:
        """Drop the run's runtime (and its memory) and serve it no more: ``get`` raises RunUnavailableError."""
        with self._guard:
            self._runtimes.pop(name, None)
            self._unavailable[name] = reason

    def available(self) -> list[RunRuntime]:
        """The runtimes of every run built so far, oldest run first."""
        with self._guard:
            return sorted(self._runtimes.values(), key=lambda runtime: runtime.record.created_at)

    def unavailable(self) -> dict[str, str]:
        """Run name -> why it could not be built."""
        with self._guard:
            return dict(self._unavailable)
