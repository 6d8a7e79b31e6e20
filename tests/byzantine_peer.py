"""A Byzantine worker for tests: trains like any other, but corrupts its gradients after backward (after the
training loop's own finiteness check, so they reach the swarm's all-reduce as an attacker's would)."""

from __future__ import annotations

import math
from typing import Any

import torch

from worker.training import TrainingLimits, TrainingLoop

ATTACKS = ("nan", "x1000", "sign_flip", "random")
SIGN_FLIP_SCALE = 8.0  # -8 x the gradient: inside the reducers' norm bound (10x), so only the aggregator stops it


def corrupt_(grad: torch.Tensor, attack: str, generator: torch.Generator) -> None:
    """Replace one gradient in place by the attack's poison."""
    if attack == "nan":
        grad.fill_(math.nan)
    elif attack == "x1000":
        grad.mul_(1000.0)
    elif attack == "sign_flip":
        grad.mul_(-SIGN_FLIP_SCALE)
    elif attack == "random":  # noise of the gradient's own scale x 3
        scale = 3.0 * float(grad.norm()) / math.sqrt(max(grad.numel(), 1))
        grad.copy_(torch.randn(grad.shape, generator=generator) * scale)
    else:
        raise ValueError(f"unknown attack {attack!r}")


class ByzantineTrainingLoop(TrainingLoop):
    """A TrainingLoop whose every step sends poisoned gradients of kind ``attack`` (one of ATTACKS), or with
    ``attack="cycle"`` each epoch the next of them (epoch e: ATTACKS[e % 4]), to try them all in one run."""

    def __init__(self, *args: Any, attack: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.attack = attack
        self._generator = torch.Generator().manual_seed(1234)

    def current_attack(self, shard: int) -> str:
        if self.attack != "cycle":
            return self.attack
        return ATTACKS[self.optimizers[shard].local_epoch % len(ATTACKS)]

    def _step_shards(self, limits: TrainingLimits, epoch_runner) -> list[int]:
        with torch.no_grad():
            for shard in self.optimizers:
                attack = self.current_attack(shard)
                for param in self.run_model.shard_parameters(shard):
                    if param.grad is not None:
                        corrupt_(param.grad, attack, self._generator)
        return super()._step_shards(limits, epoch_runner)
