"""How far a new version moved the run's LoRA parameters, against how far versions moved per epoch so far.

A version whose parameters moved from the previous version's by more than ``max_version_change_ratio`` times
the largest per-epoch change the run has shown (times the epochs between them) is out of line with the run's
history: a poisoned state that a majority of the shard's peers agreed on, or a broken merge. "Version 0" is the
run's initial LoRA, so the history starts with version 1.

Usage::

    history = ChangeHistory()
    refusal = history.check(runtime, versions, adapter_dir, epoch, ratio=20.0)   # None, or the reason
    history.record(runtime.name, version, epoch, adapter_dir)                    # after it is published
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from coordinator.runtime import RunRuntime
from coordinator.storage import VersionRecord

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a PEFT adapter folder, by their names in the file."""
    return load_file(str(Path(folder) / ADAPTER_WEIGHTS))


def as_file_names(lora: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoRA tensors named as the module holds them (``...lora_A.default.weight``) renamed as PEFT saves them."""
    return {name.replace(".default.", "."): tensor for name, tensor in lora.items()}


def lora_distance(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of the difference of two sets of LoRA tensors (inf when they hold different tensors)."""
    if set(first) != set(second):
        return math.inf
    total = 0.0
    for name, tensor in first.items():
        other = second[name]
        if tensor.shape != other.shape:
            return math.inf
        total += float((tensor.float() - other.float()).pow(2).sum())
    return math.sqrt(total)


@dataclass
class _RunHistory:
    version: int  # the newest version taken into account
    epoch: int
    tensors: dict[str, torch.Tensor]
    largest_per_epoch: float  # 0.0: no change measured yet


class ChangeHistory:
    """Per run, the largest per-epoch parameter change between consecutive versions, kept in memory and rebuilt
    from the stored versions' files after a restart (versions whose files retention removed are skipped)."""

    def __init__(self) -> None:
        self._runs: dict[str, _RunHistory] = {}

    def _history(self, runtime: RunRuntime, versions: Sequence[VersionRecord]) -> _RunHistory:
        latest = versions[-1].version if versions else 0
        known = self._runs.get(runtime.name)
        if known is not None and known.version == latest:
            return known
        history = _RunHistory(0, 0, as_file_names(runtime.initial_lora), 0.0)
        for record in versions:
            try:
                tensors = adapter_tensors(Path(record.path))
            except (OSError, ValueError):
                continue  # collected by retention: the next version is compared with the one before
            history = self._advance(history, record.version, record.epoch, tensors)
        self._runs[runtime.name] = history
        return history

    @staticmethod
    def _advance(history: _RunHistory, version: int, epoch: int, tensors: dict[str, torch.Tensor]) -> _RunHistory:
        change = lora_distance(history.tensors, tensors)
        per_epoch = change / max(1, epoch - history.epoch) if math.isfinite(change) else 0.0
        return _RunHistory(version, epoch, tensors, max(history.largest_per_epoch, per_epoch))

    def check(self, runtime: RunRuntime, versions: Sequence[VersionRecord], adapter_dir: Path, epoch: int,
              ratio: float) -> str | None:
        """Why the adapter in ``adapter_dir`` (at ``epoch``) moved too far from the latest version, or None.
        Nothing is refused before the run has a measured change (the first version: the base gate decides)."""
        history = self._history(runtime, versions)
        if history.version == 0 or history.largest_per_epoch <= 0.0:
            return None
        change = lora_distance(history.tensors, adapter_tensors(adapter_dir))
        epochs = max(1, epoch - history.epoch)
        limit = ratio * history.largest_per_epoch * epochs
        if change > limit:
            return (f"its parameters moved {change:.4g} from version {history.version}'s in {epochs} epoch(s), "
                    f"beyond {ratio:g}x the largest per-epoch change the run has shown ({history.largest_per_epoch:.4g})")
        return None

    def record(self, run_name: str, version: int, epoch: int, adapter_dir: Path) -> None:
        """Take a just-published version into the run's history."""
        history = self._runs.get(run_name)
        if history is not None and history.version == version - 1:
            self._runs[run_name] = self._advance(history, version, epoch, adapter_tensors(adapter_dir))
        else:
            self._runs.pop(run_name, None)  # rebuilt from the stored versions next time
