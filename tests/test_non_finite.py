"""A worker never feeds a NaN or inf into the swarm's average, never claims credit for such a step, and recovers
parameters that are no longer finite by loading its shard's state from a healthy peer (real hivemind peers on
loopback)."""

from __future__ import annotations

import math

import torch

from swarm.data import load_texts
from swarm.dht import start_dht, visible_addresses
from swarm.identity import load_or_create_identity
from swarm.spec import RunSpec
from worker.model_setup import build_run_model
from worker.shard_optimizers import make_shard_optimizer
from worker.training import ShardReport, TrainingLimits, TrainingLoop

SPEC = RunSpec(name="nonfinite", batch_size_per_step=4, target_batch_size=100_000, data_slices=1)


def test_a_poisoned_worker_skips_its_steps_and_recovers_its_state_from_a_healthy_peer(tmp_path):
    healthy_identity = load_or_create_identity(tmp_path / "healthy.key")
    poisoned_identity = load_or_create_identity(tmp_path / "poisoned.key")
    healthy_dht = start_dht(identity_path=str(healthy_identity.path))
    poisoned_dht = start_dht(visible_addresses(healthy_dht), identity_path=str(poisoned_identity.path))
    healthy, poisoned = build_run_model(SPEC), build_run_model(SPEC)
    optimizers = []
    try:
        healthy_optimizer = make_shard_optimizer(SPEC, 0, healthy.shard_parameters(0), healthy_dht,
                                                 healthy_identity.as_hivemind_key())
        optimizers.append(healthy_optimizer)
        poisoned_optimizer = make_shard_optimizer(SPEC, 0, poisoned.shard_parameters(0), poisoned_dht,
                                                  poisoned_identity.as_hivemind_key())
        optimizers.append(poisoned_optimizer)
        with torch.no_grad():  # the healthy peer's state is distinct from a fresh one, to recognise it
            for param in healthy.shard_parameters(0):
                param.add_(0.01)
            for param in poisoned.shard_parameters(0):
                param.fill_(math.nan)
        reports: list[ShardReport] = []
        loop = TrainingLoop(SPEC, poisoned, {0: poisoned_optimizer}, load_texts("sample")[:200],
                            torch.device("cpu"), on_report=reports.extend, report_interval_s=0.5)
        summary = loop.run(TrainingLimits(max_seconds=25))
        assert loop.skipped_steps >= 1
        # it took the healthy peer's state and trained on from there: finite, and no NaN step was counted
        assert all(torch.isfinite(param).all() for param in poisoned.shard_parameters(0))
        assert summary.steps > 0 and math.isfinite(summary.last_loss)
        assert sum(report.steps for report in reports) == summary.steps
        assert all(math.isfinite(report.mean_loss) for report in reports)
        assert summary.samples == summary.steps * SPEC.batch_size_per_step
    finally:
        for optimizer in optimizers:
            optimizer.shutdown()
        poisoned_dht.shutdown()
        healthy_dht.shutdown()
