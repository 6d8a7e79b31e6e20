"""One hivemind.Optimizer per adapter shard: each shard's LoRA parameters are averaged in their own group
(``run_id = "<run>/shard<k>"``), so workers of different shards never wait on each other.

Gradients are averaged synchronously (``use_local_updates=False``): all peers apply the same averaged gradient
to the same parameters, which keeps the LoRA A and B matrices identical across peers, the condition under which
averaging A and B separately is exact.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import hivemind
import torch

from swarm.spec import RunSpec
from swarm.state_download import list_state_sharers


def torch_optimizer_factory(spec: RunSpec) -> Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]:
    def make(params):
        if spec.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        if spec.optimizer == "adam":
            return torch.optim.Adam(params, lr=spec.lr)
        return torch.optim.SGD(params, lr=spec.lr, weight_decay=spec.weight_decay)

    return make


def make_shard_optimizer(spec: RunSpec, shard: int, params: list[torch.nn.Parameter], dht: hivemind.DHT,
                         verbose: bool = False) -> hivemind.Optimizer:
    """The hivemind.Optimizer of one shard. Client mode follows the DHT's (a NAT'ed peer passes a client DHT)."""
    return hivemind.Optimizer(
        dht=dht,
        run_id=spec.shard_run_id(shard),
        params=params,
        optimizer=torch_optimizer_factory(spec),
        target_batch_size=spec.target_batch_size,
        batch_size_per_step=spec.batch_size_per_step,
        matchmaking_time=spec.averaging.matchmaking_time,
        averaging_timeout=spec.averaging.averaging_timeout,
        # on busy machines a peer's part can arrive late; waiting only matchmaking_time for it (hivemind's
        # default) drops it from the average and leaves peers with different parameters
        next_chunk_timeout=spec.averaging.averaging_timeout,
        use_local_updates=False,
        average_state_every=spec.averaging.average_state_every,
        verbose=verbose,
        tracker_opts=dict(
            default_refresh_period=spec.averaging.progress_refresh_s,
            min_refresh_period=min(0.5, spec.averaging.progress_refresh_s),
            max_refresh_period=max(10.0, spec.averaging.progress_refresh_s),
        ),
    )


def wait_for_peers(dht: hivemind.DHT, spec: RunSpec, shards: Iterable[int], peers: int, timeout: float) -> bool:
    """Block until every given shard has ``peers`` peers (this one included) serving state, or ``timeout``.

    A swarm that starts together (the demo, tests, a scheduled event) uses this so that the first epochs are
    averaged by everyone instead of being stepped alone by whoever is fastest.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(list_state_sharers(dht, spec.shard_run_id(shard))) >= peers for shard in shards):
            return True
        time.sleep(0.2)
    return False
