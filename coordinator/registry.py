"""The run registry: launching a run (validate the spec against a real model and dataset, store it) and the
in-memory context of each run the coordinator needs to serve workers and publish (spec, data split, model).

Usage::

    registry = RunRegistry(storage)
    launched = registry.launch(spec)        # raises LaunchError with a readable message on bad input
    context = registry.context("demo")      # spec, train/eval split, shard layout
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coordinator.storage import RunExistsError, RunRecord, Storage, UnknownRunError
from swarm.data import DatasetError, DatasetSplit, dataset_digest, load_texts, split_dataset
from swarm.manifest import ChainLink, Manifest
from swarm.merge import MergeError, apply_adapter_chain
from swarm.model import ModelLoadError, base_model_fingerprint, build_lora_model, load_base_model, lora_parameters
from swarm.shards import ShardError, partition_parameters
from swarm.spec import RunSpec, SpecError, parse_version_ref
from swarm.tokenizer import TextTokenizer


class LaunchError(ValueError):
    """A run could not be launched; nothing was stored."""


@dataclass
class RunContext:
    """What the coordinator keeps in memory per run (rebuilt from the DB after a restart)."""

    record: RunRecord
    spec: RunSpec
    split: DatasetSplit
    shard_names: list[list[str]]
    tokenizer: TextTokenizer
    shard_shapes: list[list[tuple[int, ...]]] = field(default_factory=list)
    chain: tuple[ChainLink, ...] = ()  # published versions merged into the base before this run's LoRA, root first
    chain_paths: tuple[Path, ...] = ()  # where the store keeps them

    def load_base(self) -> tuple[torch.nn.Module, TextTokenizer]:
        """The model this run's LoRA trains on: the base model with the parent chain merged in."""
        base, tokenizer = load_base_model(self.spec.base_model)
        return apply_adapter_chain(base, self.chain_paths), tokenizer


@dataclass(frozen=True)
class _RunAssets:
    texts: list[str]
    fingerprint: str  # of the base model before any parent is merged in
    shard_names: list[list[str]]
    shard_shapes: list[list[tuple[int, ...]]]
    tokenizer: TextTokenizer
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


def _load_run_assets(storage: Storage, spec: RunSpec) -> _RunAssets:
    """Load what a run is made of: its texts, base model fingerprint, parent chain, shard layout, tokenizer."""
    texts = load_texts(spec.dataset)
    chain, chain_paths = resolve_parent_chain(storage, spec)
    base, tokenizer = load_base_model(spec.base_model)
    fingerprint = base_model_fingerprint(base)
    try:
        base = apply_adapter_chain(base, chain_paths)
    except MergeError as exc:
        raise LaunchError(f"parent chain of {spec.parent} does not apply to {spec.base_model}: {exc}") from None
    model = build_lora_model(base, spec.lora, seed=spec.seed)
    num_layers = int(getattr(base.config, "num_hidden_layers", 1))
    names = lora_parameters(model)
    shard_names = partition_parameters(list(names), num_layers, spec.shards)
    shard_shapes = [[tuple(names[name].shape) for name in shard] for shard in shard_names]
    return _RunAssets(texts, fingerprint, shard_names, shard_shapes, tokenizer, chain, chain_paths)


class RunRegistry:
    def __init__(self, storage: Storage):
        self.storage = storage
        self._contexts: dict[str, RunContext] = {}
        self._lock = threading.Lock()

    def launch(self, spec: RunSpec) -> RunContext:
        """Validate ``spec`` against its real base model and dataset, then store it. Idempotent for the exact
        same spec; a different spec under an existing name is refused."""
        try:
            existing = self.storage.runs.get_run(spec.name)
        except UnknownRunError:
            existing = None
        if existing is not None:
            if existing.spec_hash == spec.content_hash:
                return self.context(spec.name)
            raise LaunchError(f"run '{spec.name}' already exists with a different spec ({existing.spec_hash})")
        try:
            assets = _load_run_assets(self.storage, spec)
        except (DatasetError, ModelLoadError, ShardError) as exc:
            raise LaunchError(str(exc)) from None
        texts = assets.texts
        split = split_dataset(texts, spec.eval_fraction, spec.seed)
        if len(split.train) < spec.data_slices:
            raise LaunchError(
                f"dataset has {len(split.train)} train samples, fewer than data_slices ({spec.data_slices})"
            )
        try:
            record = self.storage.runs.create_run(spec.name, spec.to_json(), spec.content_hash, assets.fingerprint,
                                                  dataset_digest(texts))
        except RunExistsError as exc:
            raise LaunchError(str(exc)) from None
        context = self._context_of(record, spec, assets)
        with self._lock:
            self._contexts[spec.name] = context
        return context

    def context(self, run_name: str) -> RunContext:
        """The run's context, rebuilt from the stored spec if this coordinator process has not seen it yet."""
        with self._lock:
            if run_name in self._contexts:
                return self._contexts[run_name]
        record = self.storage.runs.get_run(run_name)
        spec = RunSpec.from_json(record.spec_json)
        assets = _load_run_assets(self.storage, spec)
        if dataset_digest(assets.texts) != record.dataset_digest:
            raise LaunchError(f"dataset of run '{run_name}' ({spec.dataset}) changed on disk since launch")
        if assets.fingerprint != record.base_model_fingerprint:
            raise LaunchError(f"base model of run '{run_name}' ({spec.base_model}) changed since launch")
        context = self._context_of(record, spec, assets)
        with self._lock:
            self._contexts[run_name] = context
        return context

    @staticmethod
    def _context_of(record: RunRecord, spec: RunSpec, assets: _RunAssets) -> RunContext:
        split = split_dataset(assets.texts, spec.eval_fraction, spec.seed)
        return RunContext(record, spec, split, assets.shard_names, assets.tokenizer, assets.shard_shapes,
                          assets.chain, assets.chain_paths)
