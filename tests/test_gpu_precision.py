"""Precision on a real GPU (issue 13): bf16, 8-bit and 4-bit base weights of a small Llama built from a config.
Training lowers the loss, the adapter saved from a quantized worker loads with stock PEFT on the unquantized base,
its LoRA has the names and shapes of an fp32 peer's (so mixed precisions average), every precision checks the same
fingerprint, and the fit estimate is near the measured peak. Skipped, saying so, without CUDA (CI has none);
run it on a GPU machine with ``python -m pytest tests/test_gpu_precision.py``."""

import importlib.util
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from swarm.data import encode_batch, load_texts
from swarm.model import base_model_fingerprint, build_tiny_model, lora_parameters
from swarm.precision import bitsandbytes_installed, precision_of
from swarm.spec import RunSpec
from worker.gradient_step import GradientStep
from worker.model_setup import build_run_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; run this "
                                                                      "module on a GPU machine)")
SPEC = RunSpec(name="gpu", base_model="tiny", dataset="sample", seq_len=64)
ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ["bf16", "fp16", pytest.param("8bit", marks=pytest.mark.skipif(
    not bitsandbytes_installed(), reason="needs bitsandbytes")), pytest.param("4bit", marks=pytest.mark.skipif(
    not bitsandbytes_installed(), reason="needs bitsandbytes"))]


@pytest.mark.parametrize("name", PRECISIONS)
def test_a_worker_trains_in_its_precision_and_its_adapter_loads_on_the_unquantized_base(name, tmp_path):
    device = torch.device("cuda")
    precision = precision_of(name, device)
    run_model = build_run_model(SPEC, expected_fingerprint=base_model_fingerprint(build_tiny_model()),
                                precision=precision, device=device, gradient_checkpointing=True)
    model = run_model.model.to(device).train()
    reference = build_run_model(SPEC)
    ours, theirs = lora_parameters(model), lora_parameters(reference.model)
    assert {n: tuple(p.shape) for n, p in ours.items()} == {n: tuple(p.shape) for n, p in theirs.items()}
    assert all(param.dtype == torch.float32 for param in ours.values())
    optimizer = torch.optim.AdamW(ours.values(), lr=0.003)
    step, texts, losses = GradientStep(precision, device, micro_batch_size=4), load_texts("sample"), []
    for index in range(60):
        ids, labels = encode_batch(texts[index * 8:][:8], run_model.tokenizer, SPEC.seq_len)
        losses.append(float(step.run(model, ids, labels)))
        optimizer.step()
        optimizer.zero_grad()
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1, losses
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(build_tiny_model(), str(tmp_path / "adapter"))
    for key, value in lora_parameters(loaded).items():
        assert torch.allclose(value, ours[key].detach().cpu(), atol=1e-6)


def test_the_fit_estimate_is_within_15_percent_of_the_measured_gpu_peak():
    loader = importlib.util.spec_from_file_location("memory_fit_benchmark", ROOT / "benchmarks" / "memory_fit.py")
    benchmark = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(benchmark)
    for case in benchmark.CASES:
        for name in ("bf16", "fp32"):
            measured, estimated = benchmark.measure(case, name, "cuda"), benchmark.estimate(case, name, "cuda")
            assert abs(estimated / measured - 1) < 0.15, (case, name, estimated / 1e6, measured / 1e6)
