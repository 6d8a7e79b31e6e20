"""Base models and the run's LoRA model: the built-in ``tiny`` preset, real ``from_pretrained`` loading, the base
model fingerprint that workers check against the run's, and a deterministic LoRA initialisation.

Usage::

    base, tokenizer = load_base_model("tiny")
    fingerprint = base_model_fingerprint(base)
    model = build_lora_model(base, spec.lora, seed=spec.seed)   # a peft.PeftModel
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from swarm.hub_access import HubError, cached_source
from swarm.spec import LoraSpec
from swarm.tokenizer import ByteTokenizer, HuggingFaceTokenizer, TextTokenizer

TINY_PRESET = "tiny"
TINY_SEED = 1234


class ModelLoadError(ValueError):
    """The base model could not be found or loaded; the message says what was tried."""


def tiny_config() -> LlamaConfig:
    """A ~0.3M-parameter Llama: real architecture, built from a config, trains on two CPU cores."""
    tokenizer = ByteTokenizer()
    return LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_model() -> LlamaForCausalLM:
    """The ``tiny`` preset: identical weights on every machine (fixed seed, fork-free RNG)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(tiny_config())
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def model_source(name: str) -> str:
    """What transformers loads for ``name`` (not the tiny preset): a local folder's path, or the Hub id."""
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]
    if looks_like_path and not Path(name).expanduser().exists():
        raise ModelLoadError(f"base model '{name}' is not a preset ('{TINY_PRESET}') and no such directory exists")
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def load_base_model(name: str, revision: str | None = None,
                    quantization: Any = None) -> tuple[PreTrainedModel, TextTokenizer]:
    """Load ``name``: the ``tiny`` preset, a local directory, or a Hugging Face Hub id (downloaded by transformers;
    at ``revision``, a commit, when given: see ``hub_revision``). In float32, or quantized as it loads when
    ``quantization`` (transformers' ``from_pretrained`` keywords, ``swarm.quantized.quantized_load_options``) is
    given."""
    if name == TINY_PRESET and quantization is None:
        return build_tiny_model(), ByteTokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == TINY_PRESET:  # quantized: bitsandbytes quantizes while loading, so the preset loads from a folder
        from swarm.quantized import tiny_checkpoint

        model = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint()), **quantization)
        return model.eval(), ByteTokenizer()
    source = model_source(name)
    try:
        snapshot = None if source != name else cached_source(name, revision)  # seconds when the Hub is out of reach
        options = quantization or dict(torch_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(str(snapshot or source), revision=None if snapshot else revision,
                                                     **options)
        tokenizer = HuggingFaceTokenizer(AutoTokenizer.from_pretrained(str(snapshot or source),
                                                                       revision=None if snapshot else revision))
        if snapshot is not None:  # the commit it was cached at: what hub_revision pins a run to
            model.config._commit_hash = snapshot.name
    except HubError as exc:
        raise ModelLoadError(f"unknown base model '{name}': not the '{TINY_PRESET}' preset, not a local model "
                             f"directory, and {exc}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"unknown base model '{name}': not the '{TINY_PRESET}' preset, not a local model directory, "
            f"and transformers could not load it ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        ) from None
    return model.eval(), tokenizer


def hub_revision(name: str, model: torch.nn.Module) -> str | None:
    """The Hub commit ``model`` (loaded from ``name``) resolved to, to pin a run to it; None for the ``tiny``
    preset and local folders, which have no revision to pin."""
    if name == TINY_PRESET or Path(name).expanduser().exists():
        return None
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return commit if isinstance(commit, str) and commit else None


def base_model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every base weight's name, dtype, shape and bytes: two workers agree iff their weights do.
    Taken of the float32 weights as loaded, before any cast or quantization (``swarm.quantized`` computes the
    same digest from checkpoint files, for a base that is quantized as it loads)."""
    state = model.state_dict()
    return fingerprint_tensors(list(state), state.__getitem__)


def fingerprint_tensors(names: list[str], tensor_of: Callable[[str], torch.Tensor]) -> str:
    """The fingerprint of the tensors ``names`` (any order), each read by ``tensor_of`` when its turn comes (a
    checkpoint larger than memory is digested one tensor at a time)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        tensor = tensor_of(name)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def peft_lora_config(lora: LoraSpec) -> LoraConfig:
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # PEFT annotates int, computes alpha / r: a float is fine
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def build_lora_model(base: torch.nn.Module, lora: LoraSpec, seed: int) -> PeftModel:
    """Wrap ``base`` with the run's LoRA; the seed makes the initial A matrices identical on every worker."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = get_peft_model(base, peft_lora_config(lora))
    except ValueError as exc:
        raise ModelLoadError(f"cannot apply LoRA to this base model: {exc}") from None
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def lora_parameters(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """The trainable LoRA parameters by name, in the model's own (deterministic) order."""
    return {name: param for name, param in model.named_parameters() if "lora_" in name}


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' takes CUDA when available, else CPU; 'cpu' and 'cuda[:N]' are taken as given."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but torch sees no CUDA device")
    return device
