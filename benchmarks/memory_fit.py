"""The fit estimate (swarm.memory_fit) against the measured peak memory of one training step, side by side.

On a CPU the peak is the process's peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs`` to
what is resident just before the model is built) above that; one torch thread, so that per-thread arenas do not
vary with the machine's load, and glibc's mmap threshold fixed; a fresh subprocess per case; on CUDA (``--device cuda``) it is
``torch.cuda.max_memory_allocated``. Prints one row per case.

    python benchmarks/memory_fit.py                 # CPU: Llama-style models built from configs, fp32 and bf16
    python benchmarks/memory_fit.py --device cuda   # adds 8bit and 4bit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = [  # hidden, intermediate, layers, heads, kv heads, vocab, seq_len, micro-batch, checkpointing
    (256, 688, 4, 4, 2, 4096, 256, 8, False),
    (512, 1376, 4, 8, 4, 8192, 256, 4, False),
    (512, 1376, 8, 8, 4, 8192, 512, 4, True),
    (768, 2048, 6, 12, 4, 32000, 512, 2, False),
]

MEASURE = r"""
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from swarm.model import build_lora_model
from swarm.precision import cast_base_weights, precision_of
from swarm.spec import LoraSpec
from worker.gradient_step import GradientStep
h, i, layers, heads, kv, vocab, seq, batch, ckpt, precision, device = json.loads(sys.argv[1])
device = torch.device(device)
torch.set_num_threads(1)
def status_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) * 1024
def resident():
    return status_kb("VmRSS")
def peak():
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return status_kb("VmHWM")
torch.manual_seed(0)
ids = torch.randint(0, vocab, (batch, seq))
if device.type == "cpu":  # reset the high-water mark to what is resident now: the imports may have peaked higher
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
before = peak() if device.type == "cuda" else resident()
config = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=seq)
base = LlamaForCausalLM(config)
if ckpt:
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model = build_lora_model(base, LoraSpec(), seed=0)
p = precision_of(precision, device)
cast_base_weights(model, p)
model.to(device).train()
lora = [q for n, q in model.named_parameters() if "lora_" in n]
optimizer = torch.optim.AdamW(lora, lr=1e-3)
step = GradientStep(p, device)
for _ in range(2):
    loss = step.run(model, ids, ids.clone())
    optimizer.step(); optimizer.zero_grad()
print(json.dumps({"peak": peak() - before}))
"""


def measure(case: tuple, precision: str, device: str) -> float:
    # large blocks are mmapped and given back when freed, so the resident peak follows what is really alive
    # (glibc otherwise raises its mmap threshold as blocks are freed, and the peak varies from run to run)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", MEASURE, json.dumps([*case, precision, device])],
                            capture_output=True, text=True, check=True, env=env)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak"])


def estimate(case: tuple, precision: str, device: str) -> float:
    from swarm.memory_fit import CUDA_OVERHEAD_BYTES, ModelShape, estimate_memory
    from swarm.spec import LoraSpec

    h, i, layers, heads, kv, vocab, seq, batch, ckpt = case
    shape = ModelShape(vocab=vocab, hidden=h, intermediate=i, layers=layers, heads=heads, kv_heads=kv)
    need = estimate_memory(shape, LoraSpec(), precision, seq, batch, ckpt, device_type=device)
    # the optimizer state is on the device in this measurement (in a worker it is in host memory)
    # the context is not in max_memory_allocated; the optimizer state is on the device in this measurement (in a
    # worker it is in host memory)
    context = CUDA_OVERHEAD_BYTES if device == "cuda" else 0.0
    return need.total - context + 8 * shape.lora_weights(LoraSpec())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    precisions = ["fp32", "bf16"] + (["fp16"] if args.device == "cuda" else [])
    print(f"{'model (h/i/layers/vocab)':>26} {'seq x batch':>11} {'ckpt':>5} {'precision':>9} "
          f"{'estimate MB':>11} {'measured MB':>11} {'error':>7}")
    for case in CASES:
        for precision in precisions:
            measured, estimated = measure(case, precision, args.device), estimate(case, precision, args.device)
            h, i, layers, _, _, vocab, seq, batch, ckpt = case
            print(f"{f'{h}/{i}/{layers}/{vocab}':>26} {f'{seq}x{batch}':>11} {str(ckpt):>5} {precision:>9} "
                  f"{estimated / 1e6:11.0f} {measured / 1e6:11.0f} {estimated / measured - 1:+7.0%}")


if __name__ == "__main__":
    main()
