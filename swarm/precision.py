"""Per-worker precision: what the base model's weights are held in, and what the forward pass computes in.

Every volunteer picks what fits their hardware (``swarm donate --precision``); peers of different precisions
train one run together, because what they average is the LoRA, which is always fp32 (as is its optimizer
state):

============  ==========================================  ======================================
precision     base weights                                compute
============  ==========================================  ======================================
``fp32``      float32                                     float32
``bf16``      bfloat16                                    bfloat16 autocast (CPU and CUDA)
``fp16``      float16                                     float16 autocast (CUDA only)
``8bit``      int8 (bitsandbytes LLM.int8, CUDA only)     bfloat16 or float16 autocast
``4bit``      NF4 with double quantization (QLoRA)        bfloat16 or float16 autocast
============  ==========================================  ======================================

``auto`` takes fp32 on a CPU (bf16 is slower there on most CPUs) and bf16 (fp16 where the GPU lacks bf16) on
CUDA, unless the run does not fit the GPU that way: then the fit check (``swarm.memory_fit``) steps down to 8-bit
and 4-bit.

Usage::

    precision = resolve_precision("auto", torch.device("cuda"))     # Precision(name="bf16")
    model = cast_base_weights(model, precision)                       # after the fingerprint was taken
    with precision.autocast(device):
        loss = model(...).loss
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import Iterator

import torch

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "8bit", "4bit")
QUANTIZED = ("8bit", "4bit")
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "8bit": 1.0, "4bit": 0.5}


class PrecisionError(ValueError):
    """The precision asked for cannot be used on this device; the message says why and what to do."""


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16 | 8bit | 4bit (never auto)
    compute_dtype: torch.dtype = torch.float32  # what autocast computes in (float32: no autocast)

    @property
    def quantized(self) -> bool:
        return self.name in QUANTIZED

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the base weights that are not quantized (all of them for fp32, bf16 and fp16)."""
        return {"fp32": torch.float32, "fp16": torch.float16}.get(self.name, self.compute_dtype)

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        if self.compute_dtype == torch.float32:
            yield
            return
        with torch.autocast(device_type=device.type, dtype=self.compute_dtype):
            yield


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def cuda_half_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the GPU has it (Ampere and later), else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def unavailable_reason(name: str, device: torch.device) -> str:
    """Why precision ``name`` cannot be used on ``device`` ("" when it can)."""
    if name not in PRECISION_CHOICES:
        return f"unknown precision {name!r}; choose one of {', '.join(PRECISION_CHOICES)}"
    if name == "fp16" and device.type != "cuda":
        return "fp16 needs a CUDA GPU (float16 autocast on a CPU is not supported); use bf16 or fp32 on a CPU"
    if name in QUANTIZED:
        if device.type != "cuda":
            return f"{name} needs a CUDA GPU (bitsandbytes quantizes on CUDA); use bf16 or fp32 on a CPU"
        if not bitsandbytes_installed():
            return f"{name} needs bitsandbytes: pip install bitsandbytes"
    return ""


def available_precisions(device: torch.device) -> list[str]:
    return [name for name in PRECISION_CHOICES[1:] if not unavailable_reason(name, device)]


def precision_of(name: str, device: torch.device) -> Precision:
    """The Precision ``name`` (not auto) on ``device``; PrecisionError when it cannot be used there."""
    reason = unavailable_reason(name, device)
    if name == "auto" or reason:
        raise PrecisionError(reason or "auto is resolved by resolve_precision")
    if name == "fp32":
        return Precision("fp32")
    if name == "bf16":
        return Precision("bf16", torch.bfloat16)
    if name == "fp16":
        return Precision("fp16", torch.float16)
    return Precision(name, cuda_half_dtype(device))


def default_precision(device: torch.device) -> str:
    """What ``auto`` starts from before the fit check: fp32 on a CPU, bf16 (or fp16) on CUDA."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@torch.no_grad()
def cast_base_weights(model: torch.nn.Module, precision: Precision) -> None:
    """Put the base model's floating-point weights and buffers in ``precision`` (fp32, bf16, fp16; a quantized
    base is loaded quantized), in place, leaving the LoRA parameters float32: they (and their gradients and
    optimizer state) are what the swarm averages, and peers of every precision must hold the same values. Call
    it after the LoRA was added to the float32 base, so that its initial values are the same on every peer."""
    dtype = precision.weight_dtype
    if precision.quantized or dtype == torch.float32:
        return
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if "lora_" not in name and tensor.is_floating_point():
            tensor.data = tensor.data.to(dtype)
