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
from swarm.precision import Precision, cast_base_weights
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
                    parent_adapters: Sequence[Path] = (), revision: str | None = None,
                    precision: Precision | None = None, device: torch.device | None = None,
                    gradient_checkpointing: bool = False) -> RunModel:
    """Load the base model (at the run's pinned Hub ``revision``, when it has one), check its fingerprint (when
    given) on the float32 weights as loaded, merge in the parent chain of a stacked run (``parent_adapters``, root
    first, as ``swarm.pull.fetch_stack`` returns them), add the run's LoRA, and put the base in ``precision``
    (default fp32; the LoRA stays float32). A quantized precision loads the base quantized onto ``device``; its
    fingerprint is then taken of the checkpoint files (``swarm.quantized``)."""
    precision = precision or Precision("fp32")
    if precision.quantized:
        base, tokenizer = _load_quantized(spec, expected_fingerprint, parent_adapters, revision, precision,
                                          device or torch.device("cuda"))
    else:
        base, tokenizer = load_base_model(spec.base_model, revision=revision)
        if expected_fingerprint:
            _check_fingerprint(spec, base_model_fingerprint(base), expected_fingerprint)
        base = apply_adapter_chain(base, parent_adapters)
    if gradient_checkpointing:
        # non-reentrant: gradients reach the LoRA although the frozen base's inputs need none
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
    model = build_lora_model(base, spec.lora, seed=spec.seed)
    cast_base_weights(model, precision)  # after the LoRA was made on the float32 base: the same on every peer
    num_layers = int(getattr(base.config, "num_hidden_layers", 1))
    shard_names = partition_parameters(list(lora_parameters(model)), num_layers, spec.shards)
    return RunModel(model=model, tokenizer=tokenizer, shard_names=shard_names)


def _check_fingerprint(spec: RunSpec, actual: str, expected: str) -> None:
    if actual != expected:
        raise BaseModelMismatchError(
            f"base model '{spec.base_model}' here has fingerprint {actual}, but run '{spec.name}' was launched "
            f"with {expected}: a different checkpoint or library version; refusing to train"
        )


def _load_quantized(spec: RunSpec, expected_fingerprint: str | None, parent_adapters: Sequence[Path],
                    revision: str | None, precision: Precision, device: torch.device):
    from swarm.quantized import checkpoint_fingerprint, quantized_load_options

    if parent_adapters:
        raise ValueError(f"run '{spec.name}' is stacked on {spec.parent}: its parent adapters are merged into the "
                         f"base weights, which a {precision.name} base cannot take; donate with --precision bf16, "
                         f"fp16 or fp32")
    if expected_fingerprint:
        _check_fingerprint(spec, checkpoint_fingerprint(spec.base_model, revision), expected_fingerprint)
    # not peft's prepare_model_for_kbit_training: it casts the embeddings and output layer to float32, which costs
    # an 8B Llama 4 GB; the base is frozen, so checkpointing and autocast are all it needs
    return load_base_model(spec.base_model, revision=revision, quantization=quantized_load_options(precision, device))
