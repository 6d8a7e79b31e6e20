"""One training step's forward and backward: the batch of ``batch_size_per_step`` samples in micro-batches that
fit the device, in the worker's precision, with the gradients of the whole batch accumulated into the LoRA.

Each micro-batch's mean loss is weighted by its share of the batch's loss tokens, so the accumulated gradient
(and the returned loss) is exactly the whole batch's mean, whatever the micro-batch size. On CUDA out-of-memory
the micro-batch is halved and the step taken again, which is said once.

Usage::

    step = GradientStep(precision, device, micro_batch_size=4)
    loss = step.run(model, input_ids, labels)     # gradients are in the LoRA parameters' .grad
"""

from __future__ import annotations

import torch

from swarm.data import IGNORE_INDEX
from swarm.log import get_logger
from swarm.precision import Precision

logger = get_logger(__name__)


class GradientStep:
    def __init__(self, precision: Precision, device: torch.device, micro_batch_size: int = 0):
        self.precision, self.device = precision, device
        self.micro_batch_size = micro_batch_size  # 0: the whole batch in one pass
        self._halved = False

    def run(self, model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward and backward of the batch; the batch's mean loss (detached; non-finite, also for a batch with no
        loss token: its gradients must be dropped). Halves the micro-batch and retries on CUDA out-of-memory, down to one sample."""
        while True:
            try:
                return self._run(model, input_ids, labels)
            except torch.OutOfMemoryError:
                size = self.micro_batch_size or len(input_ids)
                if self.device.type != "cuda" or size <= 1:
                    raise
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                self.micro_batch_size = size // 2
                if not self._halved:
                    logger.warning("out of GPU memory with micro-batches of %d: going on with %d (set "
                                   "--micro-batch-size to start there)", size, self.micro_batch_size)
                    self._halved = True

    def _run(self, model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        size = self.micro_batch_size or len(input_ids)
        total_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())  # causal LM: each label predicts the next token
        if total_tokens == 0:  # nothing to learn from (every answer cut off by seq_len): a mean over no tokens
            return torch.tensor(float("nan"))
        total = torch.zeros((), device=self.device)
        for start in range(0, len(input_ids), size):
            ids = input_ids[start:start + size].to(self.device)
            targets = labels[start:start + size].to(self.device)
            tokens = int((targets[:, 1:] != IGNORE_INDEX).sum())
            if tokens == 0:
                continue
            with self.precision.autocast(self.device):
                loss = model(input_ids=ids, labels=targets).loss.float()
            if not torch.isfinite(loss):
                return loss.detach()
            weighted = loss * (tokens / max(total_tokens, 1))
            weighted.backward()
            total += weighted.detach()
        return total
