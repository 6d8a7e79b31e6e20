"""Merging published adapters into a base model: for ``swarm pull --merge`` and for stacked runs, whose workers
train a new LoRA on the base model with the parent chain's adapters merged in (root first, any depth).

Usage::

    chain = [Path("v3-of-parent"), Path("v5-of-child")]          # root first
    model = apply_adapter_chain(build_tiny_model(), chain)         # in memory, a plain transformers model
    write_folder_atomically(Path("./merged"), lambda staging: write_merged_model(staging, "tiny", fingerprint, chain))
    # ./merged loads with AutoModelForCausalLM.from_pretrained; fingerprint: the run's base_model_fingerprint

``apply_adapter_chain`` changes the model it is given in place (PEFT injects and merges into its modules) and
returns it unwrapped; keep a copy if the plain base is still needed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel

from swarm.log import get_logger
from swarm.model import base_model_fingerprint, load_base_model
from swarm.tokenizer import ByteTokenizer, HuggingFaceTokenizer, TextTokenizer

logger = get_logger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BYTE_TOKENIZER_FILE = "nomoat_tokenizer.json"
MERGED_ADAPTER_FOLDER = "nomoat_adapter"  # inside a merged model folder (pull, export): the version merged last
_PEFT_PREFIX = "base_model.model."


class MergeError(ValueError):
    """An adapter folder that is not a PEFT adapter, or does not fit the model it is merged into."""


def apply_adapter_chain(model: PreTrainedModel, adapter_dirs: Sequence[Path]) -> PreTrainedModel:
    """Merge each PEFT adapter of ``adapter_dirs`` into ``model``, in order (root first); return the plain model.

    Every folder is checked before the model is touched (a PEFT config, safetensors weights, and for LoRA that
    each weight names a linear module of matching shape), so a wrong folder raises MergeError with the model
    intact; only a failure inside PEFT itself, or past the first adapter, can leave it partly merged.
    """
    from peft import PeftModel

    dirs = [Path(d) for d in adapter_dirs]
    for directory in dirs:  # merging changes no shapes, so every folder can be checked against the model now
        _check_adapter_dir(directory)
        _check_fits(model, directory)
    for directory in dirs:
        try:
            # a str path that exists is never looked up on the Hub; we checked it is a local folder above
            peft_model = PeftModel.from_pretrained(model, str(directory), is_trainable=False)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise MergeError(f"adapter {directory} does not fit the model: {_first_line(exc)}") from None
        try:
            _check_loaded_keys(peft_model, directory)
        except MergeError:
            peft_model.unload()  # takes the injected LoRA layers out again, unmerged
            raise
        model = peft_model.merge_and_unload()
        logger.debug("merged adapter %s", directory)
    return model.eval()


def write_merged_model(folder: Path, base_model: str, fingerprint: str, adapter_dirs: Sequence[Path]) -> None:
    """Write ``base_model`` with ``adapter_dirs`` merged in (root first) and its tokenizer into ``folder``: a
    standalone model (safetensors) that needs no PEFT to load, with tokenizer files ``AutoTokenizer`` loads (for
    the ``tiny`` preset's byte tokenizer also described in ``nomoat_tokenizer.json``).

    The base loaded here must have ``fingerprint`` (the run's, from its signed manifest), else the
    merge would give a different model than the swarm trained: MergeError, as for an adapter that does not fit.
    ``folder`` is usually a staging folder of ``write_folder_atomically``; ModelLoadError when the base model
    cannot be loaded.
    """
    model, tokenizer = load_base_model(base_model)
    if base_model_fingerprint(model) != fingerprint:
        raise MergeError(f"the base model '{base_model}' here differs from the one the run trained on "
                         f"(fingerprint {fingerprint}); merging would give a different model")
    model = apply_adapter_chain(model, adapter_dirs)
    model.save_pretrained(folder, safe_serialization=True)
    _write_tokenizer(tokenizer, Path(folder))


def _write_tokenizer(tokenizer: TextTokenizer, folder: Path) -> None:
    """Save ``tokenizer`` into ``folder``: a Hugging Face tokenizer's own files; for the byte tokenizer, the same
    files of its ``transformers`` twin (so ``AutoTokenizer.from_pretrained(folder)`` loads it) and its JSON
    description."""
    if isinstance(tokenizer, HuggingFaceTokenizer):
        tokenizer.hf.save_pretrained(folder)
    elif isinstance(tokenizer, ByteTokenizer):
        tokenizer.as_transformers().save_pretrained(folder)
        description = {
            "type": "nomoat.byte",
            "description": "UTF-8 bytes are tokens 0..255; then BOS, EOS and PAD (swarm.tokenizer.ByteTokenizer)",
            "vocab_size": tokenizer.vocab_size,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        (Path(folder) / BYTE_TOKENIZER_FILE).write_text(json.dumps(description, indent=2) + "\n")
    else:
        raise MergeError(f"cannot save a tokenizer of type {type(tokenizer).__name__}")


def write_folder_atomically(out: Path, write) -> Path:
    """Call ``write(staging)`` on a fresh folder beside ``out``, then put it in place of ``out``.

    On any error the staging folder is removed and ``out`` is left as it was (absent, or the old folder).
    Replacing an existing ``out`` takes two renames (old aside, new in); a crash between them leaves the new
    folder complete under ``.<name>.staging-*`` and the old one under ``.<name>.old-*``.
    """
    out = Path(out).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        write(staging)
        _fsync_tree(staging)
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, aside / out.name)
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(aside / out.name, out)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _check_adapter_dir(directory: Path) -> None:
    from peft import PeftConfig

    if not directory.is_dir():
        raise MergeError(f"adapter folder {directory} does not exist")
    if not (directory / ADAPTER_CONFIG).is_file():
        raise MergeError(f"{directory} is not a PEFT adapter: it has no {ADAPTER_CONFIG}")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise MergeError(f"{directory} is not a PEFT adapter in safetensors form: it has no {ADAPTER_WEIGHTS}")
    try:
        PeftConfig.from_pretrained(str(directory))
    except (ValueError, TypeError, KeyError, OSError) as exc:  # json.JSONDecodeError is a ValueError
        raise MergeError(f"{directory}/{ADAPTER_CONFIG} is not a valid PEFT config: {_first_line(exc)}") from None


def _adapter_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(directory / ADAPTER_WEIGHTS), framework="pt") as weights:
            return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError (not a ValueError) on a corrupt file
        raise MergeError(f"{directory}/{ADAPTER_WEIGHTS} is not a readable safetensors file: {_first_line(exc)}") from None


def _check_fits(model: torch.nn.Module, directory: Path) -> None:
    """For LoRA weights on linear layers: the module exists and the shapes agree. Other keys are left to PEFT."""
    shapes = _adapter_shapes(directory)
    if not shapes:
        raise MergeError(f"{directory}/{ADAPTER_WEIGHTS} holds no weights")
    for key, shape in shapes.items():
        for suffix, axis in ((".lora_A.weight", 1), (".lora_B.weight", 0)):
            if not (key.startswith(_PEFT_PREFIX) and key.endswith(suffix)):
                continue
            module_name = key[len(_PEFT_PREFIX):-len(suffix)]
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                raise MergeError(f"adapter {directory} does not fit the model: it has no module {module_name}") from None
            if not isinstance(module, torch.nn.Linear):
                continue
            expected = module.in_features if axis == 1 else module.out_features
            if len(shape) != 2 or shape[axis] != expected:
                raise MergeError(
                    f"adapter {directory} does not fit the model: {key} has shape {list(shape)}, "
                    f"but {module_name} is a Linear({module.in_features}, {module.out_features})"
                )


def _check_loaded_keys(peft_model, directory: Path) -> None:
    """PEFT loads adapter weights non-strictly; a weight it did not use would be silently dropped."""
    from peft import get_peft_model_state_dict

    loaded = set(get_peft_model_state_dict(peft_model))
    saved = set(_adapter_shapes(directory))
    if saved != loaded:
        unused, missing = sorted(saved - loaded), sorted(loaded - saved)
        raise MergeError(
            f"adapter {directory} does not fit the model: "
            f"{len(unused)} weights unused (e.g. {unused[:2]}), {len(missing)} missing (e.g. {missing[:2]})"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0] if text else ''}"
