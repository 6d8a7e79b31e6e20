"""How what is averaged travels: hivemind's compression for a spec's ``averaging.compression``.

hivemind 1.1's 8-bit decoder (``Quantization.extract``) reads the codebook size with ``int()`` of a one-element
array, which NumPy 2 refuses with TypeError: every 8-bit part a peer receives is then refused as an internal
error and each peer keeps its own values, while the round still looks averaged. ``averaging_compression("8bit")``
installs a fixed decoder first (``fix_8bit_decoder``); it must run before the averagers fork their processes,
as ``make_shard_optimizer`` does.

Usage::

    hivemind.Optimizer(..., state_averaging_compression=averaging_compression(spec.averaging.compression))
"""

from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import CompressionBase, Float16Compression, NoCompression, Uniform8BitQuantization
from hivemind.compression import quantization
from hivemind.proto import runtime_pb2


def _extract_quantized(self: quantization.Quantization, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
    """hivemind's ``Quantization.extract`` with the codebook size read as a scalar (NumPy 2 safe)."""
    codebook_size = int(np.frombuffer(serialized_tensor.buffer, count=1, dtype=np.int64)[0])
    codebook = np.frombuffer(serialized_tensor.buffer, offset=8, count=codebook_size, dtype=self.codebook_dtype)
    quantized = np.frombuffer(serialized_tensor.buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
    indices = torch.as_tensor(quantized, dtype=torch.int64).reshape(tuple(serialized_tensor.size))
    values = torch.as_tensor(codebook).to(dtype=getattr(torch, serialized_tensor.dtype))
    return values[indices].requires_grad_(serialized_tensor.requires_grad)


def fix_8bit_decoder() -> None:
    """Install the NumPy 2 safe decoder into hivemind's quantizers (idempotent; a no-op where not needed)."""
    quantization.Quantization.extract = _extract_quantized  # type: ignore[method-assign]


def averaging_compression(name: str) -> CompressionBase:
    """hivemind's compression for a spec's ``averaging.compression`` ('none', 'fp16' or '8bit')."""
    if name == "fp16":
        return Float16Compression()
    if name == "8bit":
        fix_8bit_decoder()
        return Uniform8BitQuantization()
    return NoCompression()
