"""A stand-in peer that serves a shard's training state the way a worker's hivemind.Optimizer does, holding
given tensors: the honest, diverging and NaN-emitting peers of the publisher's cross-check tests.

It runs as its own process (``python -m tests.state_peer INITIAL_PEER RUN_ID TENSORS.pt EPOCH``), prints its
peer ID once it serves, and shuts its DHT and averager down cleanly on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from functools import partial

import hivemind
import torch
from hivemind.optim.state_averager import TrainingStateAverager

from swarm.dht import shard_state_prefix


def main(initial_peer: str, run_id: str, tensors_path: str, epoch: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tensors = torch.load(tensors_path)
    dht = hivemind.DHT(initial_peers=[initial_peer], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    averager = TrainingStateAverager(dht=dht, optimizer=partial(torch.optim.SGD, lr=0.1),
                                     params=[torch.nn.Parameter(t.clone()) for t in tensors],
                                     prefix=shard_state_prefix(run_id), allow_state_sharing=True, start=True)
    averager.local_epoch = epoch
    averager.state_sharing_priority = epoch
    print(dht.peer_id, flush=True)
    try:
        stop.wait()
    finally:
        averager.shutdown()
        dht.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
