"""Per-worker precision, micro-batching, gradient checkpointing and the fit check, on CPU (issue 13): bf16 base
weights with float32 LoRA identical to an fp32 peer's, micro-batches and checkpointing that give the whole batch's
gradients, the checkpoint fingerprint every precision checks, the fit estimate against measured peak memory and
against the 8B-on-12-GB goal, refusals that say what to try, and `swarm doctor`."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from swarm.data import encode_batch, load_texts
from swarm.memory_fit import GB, ModelShape, estimate_memory
from swarm.model import base_model_fingerprint, build_tiny_model, lora_parameters
from swarm.precision import PrecisionError, precision_of
from swarm.quantized import checkpoint_fingerprint
from swarm.receipts import Receipt, ReceiptError
from swarm.spec import LoraSpec, RunSpec
from worker.fit_check import FitError, choose_precision
from worker.gradient_step import GradientStep
from worker.model_setup import build_run_model

CPU = torch.device("cpu")
SPEC = RunSpec(name="prec", base_model="tiny", dataset="sample", seq_len=64)
ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    loader = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def batch(size=8):
    return encode_batch(load_texts("sample")[:size], build_run_model(SPEC).tokenizer, SPEC.seq_len)


def grads(run_model):
    return {name: param.grad.clone() for name, param in lora_parameters(run_model.model).items()
            if param.grad is not None}


def test_a_bf16_worker_holds_bf16_base_weights_and_the_same_fp32_lora_as_an_fp32_worker():
    fp32 = build_run_model(SPEC)
    bf16 = build_run_model(SPEC, expected_fingerprint=base_model_fingerprint(build_tiny_model()),
                           precision=precision_of("bf16", CPU))
    base_dtypes = {param.dtype for name, param in bf16.model.named_parameters() if "lora_" not in name}
    assert base_dtypes == {torch.bfloat16}
    ours, theirs = lora_parameters(bf16.model), lora_parameters(fp32.model)
    assert all(ours[name].dtype == torch.float32 and torch.equal(ours[name], theirs[name]) for name in theirs)
    ids, labels = batch()
    loss = GradientStep(precision_of("bf16", CPU), CPU).run(bf16.model, ids, labels)
    reference = fp32.model(input_ids=ids, labels=labels).loss
    assert torch.isfinite(loss) and abs(float(loss) - float(reference)) < 0.02
    assert all(grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in grads(bf16).values())


def test_micro_batches_and_checkpointing_give_the_whole_batchs_gradients():
    ids, labels = batch()
    labels[:3, :20] = -100  # uneven loss tokens per sample: each micro-batch must count by its tokens
    whole = build_run_model(SPEC)
    whole_loss = GradientStep(precision_of("fp32", CPU), CPU).run(whole.model, ids, labels)
    for micro, checkpointing in ((3, False), (1, False), (8, True)):
        other = build_run_model(SPEC, gradient_checkpointing=checkpointing)
        other.model.train()
        loss = GradientStep(precision_of("fp32", CPU), CPU, micro_batch_size=micro).run(other.model, ids, labels)
        assert loss == pytest.approx(float(whole_loss), abs=1e-5)
        expected, got = grads(whole), grads(other)
        assert set(got) == set(expected)
        assert all(torch.allclose(got[name], expected[name], atol=1e-6) for name in expected), (micro, checkpointing)


def test_the_checkpoint_fingerprint_is_the_float32_models(tmp_path):
    model = build_tiny_model()
    model.save_pretrained(tmp_path / "fp32")
    model.half().save_pretrained(tmp_path / "fp16")  # a 16-bit checkpoint: fingerprinted as it loads in float32
    assert checkpoint_fingerprint(str(tmp_path / "fp32")) == base_model_fingerprint(build_tiny_model())
    assert checkpoint_fingerprint("tiny") == base_model_fingerprint(build_tiny_model())
    assert checkpoint_fingerprint(str(tmp_path / "fp16")) == base_model_fingerprint(build_tiny_model().half().float())


def test_quantized_and_fp16_precisions_are_refused_on_a_cpu_with_the_reason():
    for name in ("4bit", "8bit"):
        with pytest.raises(PrecisionError, match=f"{name} needs a CUDA GPU"):
            choose_precision(SPEC, name, CPU, 0, False)
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):
        precision_of("fp16", CPU)
    with pytest.raises(PrecisionError, match="unknown precision 'int3'"):
        choose_precision(SPEC, "int3", CPU, 0, False)


def test_the_fit_check_takes_what_fits_and_refuses_with_what_to_try():
    choice = choose_precision(SPEC, "auto", CPU, 0, False)
    assert choice.precision.name == "fp32" and choice.estimate is not None
    assert choice.estimate.total < choice.available_bytes
    big = RunSpec(name="big", base_model="tiny", dataset="sample", seq_len=512, batch_size_per_step=64,
                  target_batch_size=256)
    with pytest.raises(FitError) as refused:
        choose_precision(big, "auto", CPU, 0, False, available_bytes=0.05 * GB)
    message = str(refused.value)
    assert message.startswith("run 'big' needs about ") and "at fp32 with seq_len 512" in message
    assert "0.1 GB free" in message and "--micro-batch-size 1" in message


LLAMA_3_8B = ModelShape.from_config(LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8))


def test_an_8b_llama_fits_a_12_gb_card_in_4bit_at_seq_len_1024_and_not_in_bf16():
    four = estimate_memory(LLAMA_3_8B, LoraSpec(rank=16), "4bit", 1024, 1, True)
    bf16 = estimate_memory(LLAMA_3_8B, LoraSpec(rank=16), "bf16", 1024, 1, True)
    assert four.total < 12 * GB < bf16.total
    assert 5 * GB < four.weights < 6.5 * GB and 15 * GB < bf16.weights < 17 * GB  # 8.0B weights


def test_the_fit_estimate_is_near_the_measured_peak_memory_of_a_training_step():
    """A Llama built from a config, two training steps, measured in a fresh process (peak resident memory above
    what was resident before the model was built). The estimate must not be below the measurement (a fit check
    that lets an out-of-memory through), nor far above it. Seen: +11% (fp32) and +3% (bf16)."""
    benchmark = load_benchmark("memory_fit")
    for case, precision in ((benchmark.CASES[1], "fp32"), (benchmark.CASES[2], "bf16")):
        measured, estimated = benchmark.measure(case, precision, "cpu"), benchmark.estimate(case, precision, "cpu")
        assert 0.9 < estimated / measured < 1.3, (case, precision, estimated / 1e6, measured / 1e6)


def test_bf16_training_reaches_the_eval_loss_of_fp32_within_2_percent():
    """(seen: 4.4508 fp32, 4.4531 bf16; at lr 0.01 both oscillate by more than 2% between evaluations)"""
    benchmark = load_benchmark("precision_convergence")
    losses = {name: benchmark.eval_losses(name, checkpoints=(200,))[0] for name in ("fp32", "bf16")}
    assert losses["bf16"] < losses["fp32"] * 1.02 and losses["fp32"] < 4.6, losses


def test_a_receipt_records_the_precision_and_old_receipts_still_read():
    receipt = Receipt.new(run="prec", shard=0, peer_id="Qm" + "a" * 44, epoch=1, steps=1, samples=8, tokens=10,
                          compute_seconds=1.0, loss=4.0, started_at=1.0, ended_at=2.0, precision="bf16")
    assert Receipt.from_payload(receipt.payload()).precision == "bf16"
    old = json.loads(receipt.payload())
    del old["precision"]
    assert Receipt.from_payload(json.dumps(old).encode()).precision == ""
    with pytest.raises(ReceiptError, match="precision is malformed"):
        Receipt.from_payload(json.dumps({**old, "precision": "int3"}).encode())


def test_swarm_doctor_reports_the_machine():
    result = subprocess.run([sys.executable, "-m", "nomoat_cli", "doctor"], capture_output=True, text=True,
                            timeout=120, check=True)
    assert "precisions on cpu: fp32, bf16" in result.stdout
    assert "reachability: " in result.stdout and "GB memory" in result.stdout
