"""Handing the final state over: a donor that stops asks the coordinator to snapshot the run while it still
serves its state, so that the work since the last version is kept even when every donor leaves
(``coordinator.hand_over``). It waits for the answer up to a deadline; a (second) Ctrl-C skips the wait.

Usage::

    hand_over_final_state(client, assignment.worker_id, identity, epoch=12, timeout_s=120)
"""

from __future__ import annotations

import time

from swarm.client import CoordinatorClient, CoordinatorError
from swarm.identity import Identity
from swarm.log import get_logger
from swarm.stop_signals import ctrl_c_pressed

logger = get_logger(__name__)


def hand_over_final_state(client: CoordinatorClient, worker_id: str, identity: Identity, epoch: int,
                          timeout_s: float) -> bool:
    """True once a version holds ``epoch``: published now from this worker's state, or earlier."""
    deadline = time.monotonic() + timeout_s
    logger.info("handing the final state (epoch %d) to the coordinator (up to %.0fs; %s to skip)", epoch, timeout_s,
                "Ctrl-C again" if ctrl_c_pressed() else "Ctrl-C")
    while True:
        left = deadline - time.monotonic()
        if left < 1.0:
            logger.warning("the coordinator did not take the final state within %.0fs", timeout_s)
            return False
        try:
            reply = client.hand_over(worker_id, identity, epoch, timeout=left)
        except CoordinatorError as exc:
            logger.warning("could not hand the final state over: %s", exc)
            return False
        if reply.kept:
            logger.info("the coordinator keeps the final state: %s", reply.message)
            return True
        if not 0 < reply.retry_after_s < deadline - time.monotonic():
            logger.warning("the coordinator did not keep the final state: %s", reply.message)
            return False
        time.sleep(reply.retry_after_s)
