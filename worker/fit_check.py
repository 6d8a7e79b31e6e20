"""Before anything is downloaded: will the run fit this device, and in which precision?

The base model's config (config.json only, or the tiny preset's) gives its shape; ``swarm.memory_fit`` estimates
the memory a training step needs at each precision; ``auto`` takes the first that fits, from fp32 (CPU) or
bf16 (CUDA) down to 8-bit and 4-bit where bitsandbytes can run. When nothing fits, the volunteer hears it at once
with what to try, instead of after a long download and an out-of-memory error.

Usage::

    choice = choose_precision(spec, "auto", torch.device("cuda"), micro_batch=0, checkpointing=True)
    choice.precision          # Precision(name="4bit", ...)
    choice.estimate.describe()
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

from swarm.log import get_logger
from swarm.memory_fit import GB, MemoryEstimate, ModelShape, estimate_memory
from swarm.model import TINY_PRESET, model_source, tiny_config
from swarm.precision import Precision, PrecisionError, default_precision, precision_of, unavailable_reason
from swarm.spec import RunSpec

logger = get_logger(__name__)


class FitError(RuntimeError):
    """The run does not fit this device at any precision allowed; the message says what to try."""


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
    estimate: MemoryEstimate | None  # None: the base model's shape could not be read (the check was skipped)
    available_bytes: float


def device_memory(device: torch.device) -> float:
    """Bytes a run may use: the GPU's free memory, or the host's available memory for a CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return float(free)
    return float(psutil.virtual_memory().available)


def model_shape(spec: RunSpec, revision: str | None = None) -> ModelShape | None:
    """The base model's shape from its config alone; None when the config cannot be read (not a Llama-style
    config, or no network): the worker then trains without the check."""
    try:
        if spec.base_model == TINY_PRESET:
            return ModelShape.from_config(tiny_config())
        from transformers import AutoConfig

        return ModelShape.from_config(AutoConfig.from_pretrained(model_source(spec.base_model), revision=revision))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        logger.info("cannot estimate the memory run %s needs (%s); skipping the fit check", spec.name, exc)
        return None


def choose_precision(spec: RunSpec, choice: str, device: torch.device, micro_batch: int, checkpointing: bool,
                     revision: str | None = None, available_bytes: float | None = None) -> PrecisionChoice:
    """The precision to train ``spec`` in on ``device``: ``choice`` itself (PrecisionError if it cannot run here,
    FitError if it does not fit), or for ``auto`` the first of the default and then 8-bit and 4-bit that fits."""
    if choice != "auto":
        reason = unavailable_reason(choice, device)
        if reason:
            raise PrecisionError(reason)
    candidates = [choice] if choice != "auto" else [default_precision(device), "8bit", "4bit"]
    candidates = [name for name in candidates if not unavailable_reason(name, device)]
    available = device_memory(device) if available_bytes is None else available_bytes
    shape = model_shape(spec, revision)
    if shape is None:
        return PrecisionChoice(precision_of(candidates[0], device), None, available)
    micro = micro_batch or spec.batch_size_per_step
    estimate = None
    for name in candidates:
        estimate = estimate_memory(shape, spec.lora, name, spec.seq_len, micro, checkpointing, device.type)
        if estimate.total <= available:
            return PrecisionChoice(precision_of(name, device), estimate, available)
    assert estimate is not None
    where = "this GPU has" if device.type == "cuda" else "this machine has"
    hints = [hint for hint in (
        "--micro-batch-size 1" if micro > 1 else "",
        "--precision 4bit" if device.type == "cuda" and "4bit" not in candidates[-1:] else "",
        "a GPU with more memory" if device.type == "cuda" else "a GPU (--device cuda) or a machine with more memory",
    ) if hint]
    raise FitError(f"run '{spec.name}' needs {estimate.describe()} at {estimate.precision} with seq_len "
                   f"{spec.seq_len} and micro-batches of {micro}; {where} {available / GB:.1f} GB free: try "
                   f"{' or '.join(hints)}")
