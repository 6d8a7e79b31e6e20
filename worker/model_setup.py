"""A worker's model: the run's base model (checked against the run's fingerprint), with the parent chain of a
stacked run merged in, wrapped with the run's LoRA, and the LoRA parameters split into the run's shards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from swarm.merge import apply_adapter_chain
from swarm.model import base_model_fingerprint, build_lora_model, load_base_model, lora_parameters
from swarm.shards import partition_parameters
from swarm.spec import RunSpec
from swarm.tokenizer import TextTokenizer


class BaseModelMismatchError(RuntimeError):
    """This machine's base model differs from the run's; training on it would poison the average."""


@dataclass
class RunModel:
    """The PEFT model of a run and its LoRA parameters by shard (names in a fixed order, shared with the
    coordinator, since hivemind's state download lists parameters in that order)."""

    model: PeftModel
    tokenizer: TextTokenizer
    shard_names: list[list[str]]

    def shard_parameters(self, shard: int) -> list[torch.nn.Parameter]:
        named = lora_parameters(self.model)
        return [named[name] for name in self.shard_names[shard]]


def build_run_model(spec: RunSpec, expected_fingerprint: str | None = None,
                    parent_adapters: Sequence[Path] = (), revision: str | None = None) -> RunModel:
    """Load the base model (at the run's pinned Hub ``revision``, when it has one), check its fingerprint (when
    given), merge in the parent chain of a stacked run (``parent_adapters``, root first, as
    ``swarm.pull.fetch_stack`` returns them), add the run's LoRA."""
    base, tokenizer = load_base_model(spec.base_model, revision=revision)
    if expected_fingerprint:
        actual = base_model_fingerprint(base)
        if actual != expected_fingerprint:
            raise BaseModelMismatchError(
                f"base model '{spec.base_model}' here has fingerprint {actual}, but run '{spec.name}' was launched "
                f"with {expected_fingerprint}: a different checkpoint or library version; refusing to train"
            )
    base = apply_adapter_chain(base, parent_adapters)
    model = build_lora_model(base, spec.lora, seed=spec.seed)
    num_layers = int(getattr(base.config, "num_hidden_layers", 1))
    shard_names = partition_parameters(list(lora_parameters(model)), num_layers, spec.shards)
    return RunModel(model=model, tokenizer=tokenizer, shard_names=shard_names)
