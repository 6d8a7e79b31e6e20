"""Adapter shards: a fixed partition of a run's LoRA parameters by contiguous layer ranges.

Each shard is averaged by its own hivemind.Optimizer group, so a worker can train one shard or all of them.
With ``shards=1`` every LoRA parameter is in shard 0.
"""

from __future__ import annotations

import re

_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


class ShardError(ValueError):
    """The run's shard count does not fit the model."""


def layer_of(param_name: str) -> int | None:
    match = _LAYER_INDEX.search(param_name)
    return int(match.group(1)) if match else None


def partition_parameters(names: list[str], num_layers: int, shards: int) -> list[list[str]]:
    """Split LoRA parameter names into ``shards`` lists by layer range; names outside the layers go to shard 0.

    >>> partition_parameters(["m.layers.0.q.lora_A", "m.layers.1.q.lora_A"], num_layers=2, shards=2)
    [['m.layers.0.q.lora_A'], ['m.layers.1.q.lora_A']]
    """
    if shards > num_layers:
        raise ShardError(f"shards ({shards}) cannot exceed the base model's number of layers ({num_layers})")
    partition: list[list[str]] = [[] for _ in range(shards)]
    for name in names:
        layer = layer_of(name)
        shard = 0 if layer is None else min(layer * shards // num_layers, shards - 1)
        partition[shard].append(name)
    empty = [index for index, members in enumerate(partition) if not members]
    if empty:
        raise ShardError(f"shards {empty} would hold no LoRA parameters; use fewer shards or more target modules")
    return partition
