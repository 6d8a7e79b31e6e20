"""Quantized base models (8-bit and 4-bit NF4 through bitsandbytes, on CUDA): the loading options, and the base
model fingerprint computed from the checkpoint files, since a base quantized as it loads has no float32 weights
to digest. The digest is the one ``swarm.model.base_model_fingerprint`` takes of the float32 model, so peers of
every precision check the same fingerprint.

Usage::

    fingerprint = checkpoint_fingerprint("meta-llama/Llama-3.1-8B")
    model, tokenizer = load_base_model("meta-llama/Llama-3.1-8B", quantization=quantized_load_options(p, device))
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from swarm.model import TINY_PRESET, build_tiny_model, fingerprint_tensors, model_source
from swarm.precision import Precision

WEIGHT_FILES = "*.safetensors"


def quantized_load_options(precision: Precision, device: torch.device) -> dict[str, Any]:
    """transformers' ``from_pretrained`` keywords that load the base quantized onto ``device`` (QLoRA's NF4 with
    double quantization for 4bit, LLM.int8 for 8bit), computing in ``precision.compute_dtype``."""
    from transformers import BitsAndBytesConfig

    if precision.name == "4bit":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=precision.compute_dtype)
    elif precision.name == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        raise ValueError(f"{precision.name} is not a quantized precision")
    return dict(quantization_config=config, torch_dtype=precision.compute_dtype,
                device_map={"": device.index or 0})


@functools.cache
def tiny_checkpoint() -> Path:
    """The ``tiny`` preset saved as a checkpoint folder (once per process), for loading it quantized."""
    folder = Path(tempfile.mkdtemp(prefix="nomoat-tiny-"))
    build_tiny_model().save_pretrained(folder, safe_serialization=True)
    return folder


def checkpoint_folder(name: str, revision: str | None = None) -> Path:
    """The local folder holding ``name``'s config and safetensors weights (downloaded from the Hub for an id)."""
    if name == TINY_PRESET:
        return tiny_checkpoint()
    source = model_source(name)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision, allow_patterns=[WEIGHT_FILES, "*.json"]))


def checkpoint_fingerprint(name: str, revision: str | None = None) -> str:
    """``base_model_fingerprint`` of the float32 model ``name`` loads as, digested from its safetensors files one
    tensor at a time (tied output embeddings included, as in the model's state dict)."""
    from safetensors import safe_open

    folder = checkpoint_folder(name, revision)
    files = sorted(folder.glob(WEIGHT_FILES))
    if not files:
        raise FileNotFoundError(f"{folder} holds no {WEIGHT_FILES} weights to fingerprint")
    location: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            location.update((key, file) for key in handle.keys())
    aliases: dict[str, str] = {}
    config = json.loads((folder / "config.json").read_text())
    if config.get("tie_word_embeddings", False) and "lm_head.weight" not in location:
        aliases["lm_head.weight"] = "model.embed_tokens.weight"

    def tensor_of(key: str) -> torch.Tensor:
        key = aliases.get(key, key)
        with safe_open(str(location[key]), framework="pt") as handle:
            tensor = handle.get_tensor(key)
        return tensor.float() if tensor.is_floating_point() else tensor

    return fingerprint_tensors([*location, *aliases], tensor_of)
