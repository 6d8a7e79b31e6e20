"""bf16 against fp32 training of the tiny preset on a CPU, at equal samples: the held-out eval loss after 100,
200 and 400 steps of 8 samples (AdamW, lr 0.003, LoRA defaults), each precision from the same initial LoRA.

    python benchmarks/precision_convergence.py
"""

from __future__ import annotations

import torch

from swarm.data import encode_batch, load_texts
from swarm.evaluation import eval_loss
from swarm.model import lora_parameters
from swarm.precision import precision_of
from swarm.spec import RunSpec
from worker.gradient_step import GradientStep
from worker.model_setup import build_run_model

CHECKPOINTS = (100, 200, 400)


def eval_losses(name: str, checkpoints: tuple[int, ...] = CHECKPOINTS) -> list[float]:
    """The held-out eval loss after each of ``checkpoints`` steps of training the tiny preset in precision ``name``
    on a CPU (also what tests/test_precision.py checks)."""
    cpu = torch.device("cpu")
    spec = RunSpec(name="precision", base_model="tiny", dataset="sample", seq_len=64)
    texts = load_texts("sample")
    train, held_out = texts[:1600], texts[1800:2000]
    precision = precision_of(name, cpu)
    run_model = build_run_model(spec, precision=precision)
    model = run_model.model.train()
    optimizer = torch.optim.AdamW(lora_parameters(model).values(), lr=0.003)
    step = GradientStep(precision, cpu)
    losses = []
    for index in range(1, checkpoints[-1] + 1):
        ids, labels = encode_batch(train[index * 8 % 1600:][:8], run_model.tokenizer, spec.seq_len)
        step.run(model, ids, labels)
        optimizer.step()
        optimizer.zero_grad()
        if index in checkpoints:
            losses.append(eval_loss(model, held_out, run_model.tokenizer, spec.seq_len))
    return losses


def main() -> None:
    results = {name: eval_losses(name) for name in ("fp32", "bf16")}
    print(f"{'steps':>6} {'fp32':>8} {'bf16':>8} {'bf16 vs fp32':>13}")
    for index, steps in enumerate(CHECKPOINTS):
        fp32, bf16 = results["fp32"][index], results["bf16"][index]
        print(f"{steps:>6} {fp32:8.4f} {bf16:8.4f} {bf16 / fp32 - 1:+13.2%}")


if __name__ == "__main__":
    main()
