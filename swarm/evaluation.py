"""Eval loss of a causal LM on held-out texts: the number the publisher gates on and the demo reports."""

from __future__ import annotations

from typing import Sequence

import torch

from swarm.data import IGNORE_INDEX, encode_batch
from swarm.samples import TrainingSample
from swarm.tokenizer import TextTokenizer


@torch.no_grad()
def eval_loss(model: torch.nn.Module, texts: Sequence[TrainingSample], tokenizer: TextTokenizer, seq_len: int,
              batch_size: int = 32) -> float:
    """Mean token-level cross-entropy over ``texts`` (every predicted token weighs the same), masked as training
    masks them: an instruction or chat sample is scored on its answers only. One sample per row (never packed),
    so the number does not depend on how samples happened to be packed."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    try:
        for start in range(0, len(texts), batch_size):
            input_ids, labels = encode_batch(texts[start : start + batch_size], tokenizer, seq_len)
            input_ids, labels = input_ids.to(device), labels.to(device)
            logits = model(input_ids=input_ids).logits[:, :-1].float()
            targets = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total_loss += loss.item()
            total_tokens += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total_loss / max(total_tokens, 1)
