"""How much memory a run needs on a worker's device, estimated from the base model's config alone (nothing is
downloaded but config.json), so that a volunteer hears "this will not fit" before a long download.

The estimate adds up, for one micro-batch:

- **weights**: every base parameter at its precision's bytes (4-bit NF4 with double quantization: 0.516 bytes
  per weight of the decoder's linear layers; the embeddings and the output layer stay 16-bit);
- **LoRA**: the run's LoRA parameters and their gradients in float32 on the device (the optimizer state and
  hivemind's averaging buffers live in host memory: ``host_bytes``);
- **activations** kept for the backward pass at the run's ``seq_len``: per decoder layer its inputs, attention and
  MLP intermediates (only each layer's input with gradient checkpointing, plus one layer recomputed), the
  attention scores where the attention kernel keeps them (CPU), and the logits with their float32 loss copies;
- **overhead**: the CUDA context and allocator slack (none on a CPU).

Usage::

    shape = ModelShape.from_config(AutoConfig.from_pretrained("meta-llama/Llama-3.1-8B"))
    need = estimate_memory(shape, spec.lora, "4bit", seq_len=1024, micro_batch=1, checkpointing=True)
    print(need.describe())     # "about 8.9 GB (weights 5.7 GB, LoRA 171 MB, activations 1.8 GB, overhead 1.2 GB)"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swarm.precision import BYTES_PER_WEIGHT
from swarm.spec import LoraSpec

GB = 1e9
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes, 8-bit block scales, fp32 second-level scales
CUDA_OVERHEAD_BYTES = 0.6 * GB  # context, cuBLAS workspace
ALLOCATOR_SLACK = 0.08  # fragmentation of the caching allocator
HOST_BYTES_PER_LORA_WEIGHT = 5 * 4  # float32: optimizer's copy, two Adam moments, gradient accumulator, average


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder that memory depends on."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        heads = int(config.num_attention_heads)
        return cls(vocab=int(config.vocab_size), hidden=int(config.hidden_size),
                   intermediate=int(config.intermediate_size), layers=int(config.num_hidden_layers), heads=heads,
                   kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
                   tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))

    @property
    def kv_width(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each decoder layer's linear modules, by the name LoRA targets them with."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_weights(self) -> int:
        """Weights of all decoder layers' linear modules (what bitsandbytes quantizes)."""
        return self.layers * sum(n_in * n_out for n_in, n_out in self.linear_shapes().values())

    @property
    def other_weights(self) -> int:
        """Embeddings, the output layer (unless tied) and the norms: kept in 16 or 32 bits."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + (2 * self.layers + 1) * self.hidden

    def lora_weights(self, lora: LoraSpec) -> int:
        shapes = self.linear_shapes()
        per_layer = sum(lora.rank * (shapes[name][0] + shapes[name][1])
                        for name in lora.target_modules if name in shapes)
        return self.layers * per_layer


@dataclass(frozen=True)
class MemoryEstimate:
    precision: str
    weights: float  # bytes on the device
    lora: float
    activations: float
    overhead: float
    host_bytes: float  # optimizer state and averaging buffers, in host memory

    @property
    def total(self) -> float:
        return self.weights + self.lora + self.activations + self.overhead

    def describe(self) -> str:
        return (f"about {size_text(self.total)} (weights {size_text(self.weights)}, LoRA {size_text(self.lora)}, "
                f"activations {size_text(self.activations)}, overhead {size_text(self.overhead)})")


def size_text(size: float) -> str:
    """``size`` bytes for a person: GB with one decimal from 1 GB on, else whole MB."""
    return f"{size / GB:.1f} GB" if size >= GB else f"{size / 1e6:.0f} MB"


def estimate_memory(shape: ModelShape, lora: LoraSpec, precision: str, seq_len: int, micro_batch: int,
                    checkpointing: bool, device_type: str = "cuda") -> MemoryEstimate:
    """Peak memory of one training step of ``micro_batch`` samples of ``seq_len`` tokens at ``precision``."""
    compute_bytes = 4 if precision == "fp32" else 2
    if precision == "4bit":
        weights = shape.linear_weights * NF4_BYTES_PER_WEIGHT + shape.other_weights * 2
    elif precision == "8bit":
        weights = shape.linear_weights * 1.0 + shape.other_weights * 2
    else:
        weights = (shape.linear_weights + shape.other_weights) * BYTES_PER_WEIGHT[precision]
    lora_weights = shape.lora_weights(lora)
    tokens = seq_len * micro_batch
    h, kv, i = shape.hidden, shape.kv_width, shape.intermediate
    # kept per layer for the backward pass: norm inputs and outputs, q k v, attention output, MLP in, gate, up,
    # act(gate) and product; in 16-bit compute the norms also keep their float32 copies
    per_layer = tokens * (6 * h + 2 * kv + 4 * i) * compute_bytes
    if compute_bytes < 4:
        per_layer += tokens * 2 * h * 4
    if device_type != "cuda":  # the math attention kernel keeps its scores and (float32) probabilities
        per_layer += micro_batch * shape.heads * seq_len * seq_len * (compute_bytes + 4)
    kept = (shape.layers * tokens * h * compute_bytes + per_layer) if checkpointing else shape.layers * per_layer
    logits = tokens * shape.vocab * (compute_bytes + 4 + 4)  # logits, their float32 copy and its gradient
    activations = kept + logits
    subtotal = weights + 8 * lora_weights + activations
    overhead = (CUDA_OVERHEAD_BYTES + ALLOCATOR_SLACK * subtotal) if device_type == "cuda" else 0.0
    return MemoryEstimate(precision, weights, 8.0 * lora_weights, activations, overhead,
                          HOST_BYTES_PER_LORA_WEIGHT * lora_weights)
