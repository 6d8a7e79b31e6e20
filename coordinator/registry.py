"""The run registry: launching a run (validate the spec against a real model and dataset, store it) and the
in-memory context of each run the coordinator needs to serve workers and publish (spec, data split, model).

Usage::

    registry = RunRegistry(storage)
    launched = registry.launch(spec)        # raises LaunchError with a readable message on bad input
    context = registry.context("demo")      # spec, train/eval split, shard layout
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from coordinator.storage import RunExistsError, RunRecord, Storage, UnknownRunError
from swarm.data import DatasetError, DatasetSplit, dataset_digest, load_texts, split_dataset
from swarm.model import ModelLoadError, base_model_fingerprint, build_lora_model, load_base_model, lora_parameters
from swarm.shards import ShardError, partition_parameters
from swarm.spec import RunSpec
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


def _load_run_assets(spec: RunSpec) -> tuple[list[str], str, list[list[str]], TextTokenizer]:
    """Load what a run is made of: its texts, its base model's fingerprint, its shard layout, its tokenizer."""
    texts = load_texts(spec.dataset)
    base, tokenizer = load_base_model(spec.base_model)
    fingerprint = base_model_fingerprint(base)
    model = build_lora_model(base, spec.lora, seed=spec.seed)
    num_layers = int(getattr(base.config, "num_hidden_layers", 1))
    shard_names = partition_parameters(list(lora_parameters(model)), num_layers, spec.shards)
    return texts, fingerprint, shard_names, tokenizer


class RunRegistry:
    def __init__(self, storage: Storage):
        self.storage = storage
        self._contexts: dict[str, RunContext] = {}
        self._lock = threading.Lock()

    def launch(self, spec: RunSpec) -> RunContext:
        """Validate ``spec`` against its real base model and dataset, then store it. Idempotent for the exact
        same spec; a different spec under an existing name is refused."""
        try:
            existing = self.storage.get_run(spec.name)
        except UnknownRunError:
            existing = None
        if existing is not None:
            if existing.spec_hash == spec.content_hash:
                return self.context(spec.name)
            raise LaunchError(f"run '{spec.name}' already exists with a different spec ({existing.spec_hash})")
        try:
            texts, fingerprint, shard_names, tokenizer = _load_run_assets(spec)
        except (DatasetError, ModelLoadError, ShardError) as exc:
            raise LaunchError(str(exc)) from None
        split = split_dataset(texts, spec.eval_fraction, spec.seed)
        if len(split.train) < spec.data_slices:
            raise LaunchError(
                f"dataset has {len(split.train)} train samples, fewer than data_slices ({spec.data_slices})"
            )
        try:
            record = self.storage.create_run(spec.name, spec.to_json(), spec.content_hash, fingerprint,
                                             dataset_digest(texts))
        except RunExistsError as exc:
            raise LaunchError(str(exc)) from None
        context = RunContext(record, spec, split, shard_names, tokenizer)
        with self._lock:
            self._contexts[spec.name] = context
        return context

    def context(self, run_name: str) -> RunContext:
        """The run's context, rebuilt from the stored spec if this coordinator process has not seen it yet."""
        with self._lock:
            if run_name in self._contexts:
                return self._contexts[run_name]
        record = self.storage.get_run(run_name)
        spec = RunSpec.from_json(record.spec_json)
        texts, fingerprint, shard_names, tokenizer = _load_run_assets(spec)
        if dataset_digest(texts) != record.dataset_digest:
            raise LaunchError(f"dataset of run '{run_name}' ({spec.dataset}) changed on disk since launch")
        if fingerprint != record.base_model_fingerprint:
            raise LaunchError(f"base model of run '{run_name}' ({spec.base_model}) changed since launch")
        context = RunContext(record, spec, split_dataset(texts, spec.eval_fraction, spec.seed), shard_names, tokenizer)
        with self._lock:
            self._contexts[run_name] = context
        return context
