"""A run that survives nights when nobody trains: a donor that finds no live peer on a shard starts that shard
from the run's latest published version (fetched and verified like a pull) instead of from the base model, and
continues its epochs from the version's epoch.

Shards that have live peers are left as they are: hivemind downloads their state from those peers. Shards this
worker does not train take the version's values too, so that its forward pass sees the run's current adapter.
Optimizer state is not published, so the optimizer of a restarted shard starts afresh.

Usage::

    start = start_from_latest_version(endpoint, spec, run_model, shards, dht, user_dirs)
    ...  # create the shard optimizers
    if start is not None:
        for shard in start.shards:
            optimizers[shard].start_at_epoch(start.epoch)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hivemind
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from swarm.client import CoordinatorError, Endpoint
from swarm.dht import read_shard_progress
from swarm.log import get_logger
from swarm.model import lora_parameters
from swarm.paths import UserDirs
from swarm.pull import PullError, fetch_stack
from swarm.spec import RunSpec
from worker.model_setup import RunModel

logger = get_logger(__name__)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class LatestVersionStart:
    version: int
    epoch: int  # the version's epoch: the restarted shards continue from it
    shards: tuple[int, ...]  # the shards of this worker that started from the version


def shards_without_peers(dht: hivemind.DHT, spec: RunSpec, shards: list[int]) -> list[int]:
    """The shards among ``shards`` that no other peer trains right now: none has a progress record for it (a
    training peer refreshes its record, and withdraws it when it stops; state-sharing declarations outlive the
    peer by up to 30 s, so they do not count)."""
    me = dht.peer_id.to_base58()
    return [shard for shard in shards
            if not {record.peer_id for record in read_shard_progress(dht, spec.shard_run_id(shard))} - {me}]


def start_from_latest_version(endpoint: str | Endpoint, spec: RunSpec, run_model: RunModel, shards: list[int],
                              dht: hivemind.DHT, user_dirs: UserDirs) -> LatestVersionStart | None:
    """Load the latest version into the model when some of ``shards`` have no live peer; None when every shard
    has peers, or the run has no version yet (those shards start from the base model, as before)."""
    alone = shards_without_peers(dht, spec, shards)
    if not alone:
        return None
    try:
        manifest, folders = fetch_stack(endpoint, spec.name, "latest", user_dirs=user_dirs)
    except (PullError, CoordinatorError) as exc:
        logger.info("no live peer on shard(s) %s and no version to start from (%s): starting from the base model",
                    alone, exc)
        return None
    try:
        load_version(run_model, folders[-1], keep=[shard for shard in shards if shard not in alone])
    except (RuntimeError, ValueError, OSError) as exc:
        logger.warning("could not load version %d of run %s (%s): starting from the base model", manifest.version,
                       spec.name, exc)
        return None
    logger.info("no live peer on shard(s) %s: starting from version %d of run %s (epoch %d, eval loss %.4f)",
                alone, manifest.version, spec.name, manifest.epoch, manifest.eval_loss)
    return LatestVersionStart(manifest.version, manifest.epoch, tuple(alone))


@torch.no_grad()
def load_version(run_model: RunModel, folder: Path, keep: list[int]) -> None:
    """Put the version's LoRA tensors (a stock PEFT adapter folder) into the model, except the shards in ``keep``,
    which hold their current values. ValueError when the version does not cover every LoRA parameter."""
    named = lora_parameters(run_model.model)
    kept = {name: named[name].detach().clone() for shard in keep for name in run_model.shard_names[shard]}
    before = {name: param.detach().clone() for name, param in named.items()}
    result = set_peft_model_state_dict(run_model.model, load_file(str(folder / ADAPTER_WEIGHTS)))
    missing = [name for name in getattr(result, "missing_keys", ()) if name in named]
    unexpected = list(getattr(result, "unexpected_keys", ()))
    if missing or unexpected:
        for name, value in before.items():
            named[name].copy_(value)
        raise ValueError(f"the version does not fit the run's LoRA: {len(missing)} tensor(s) missing, "
                         f"{len(unexpected)} unexpected")
    for name, value in kept.items():
        named[name].copy_(value)
