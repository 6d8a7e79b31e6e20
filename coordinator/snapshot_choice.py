"""Which peers' state becomes a shard's snapshot: only the run's authorized peers are asked, a strict majority of
all authorized peers serving the shard must agree, and no state beyond the epoch honest peers are at is used.

The candidates are the shard's authorized peers (registered live workers, ``coordinator.authorized``),
identified by peer ID. hivemind's ``all_averagers`` entries are unsigned and anyone may overwrite them, so they
are only a hint of who serves (the order to ask in, and who counts as serving although it did not answer),
never the list of candidates: an attacker overwriting them cannot hide an honest peer. Throwaway DHT identities
are never asked at all.

Usage::

    snapshot = fetch_shard_snapshot(dht, "demo_shard0", 0, names, shapes, timeout=60, policy=policy,
                                    authorized={"QmAlice...", "QmBob...", "QmCarol..."}, max_epoch=9,
                                    max_bytes=default_state_cap(parameter_bytes))
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass

import hivemind
import torch

from coordinator.publish_policy import PublishPolicy
from swarm.log import get_logger
from swarm.state_download import DownloadedState, StateDownloadError, download_state, list_state_sharers

logger = get_logger(__name__)


class SnapshotError(RuntimeError):
    """The swarm's state could not be turned into a valid adapter; nothing was published."""


class NothingToSnapshot(SnapshotError):
    """No snapshot was taken: no peer serves the state yet, or nothing changed since the last version."""


class NoMajority(SnapshotError):
    """The authorized peers serving a shard do not agree by a strict majority (perhaps only for now: they may
    straddle an epoch boundary)."""


@dataclass(frozen=True)
class ShardSnapshot:
    shard: int
    epoch: int
    peer_id: str  # the peer whose tensors are used
    tensors: dict[str, torch.Tensor]
    agreeing_peers: tuple[str, ...] = ()  # peers whose state matched (the used one included)
    excluded: tuple[tuple[str, str], ...] = ()  # (peer, why) for peers whose state was not used


def tensors_agree(first: list[torch.Tensor], second: list[torch.Tensor], policy: PublishPolicy) -> bool:
    """Every tensor within the policy's tolerance of its counterpart."""
    per_element = policy.agreement_atol + policy.drift_steps * policy.step_size
    for a, b in zip(first, second):
        scale = max(a.norm().item(), b.norm().item())
        if (a - b).norm().item() > policy.agreement_rtol * scale + per_element * math.sqrt(a.numel()):
            return False
    return True


def _problem_with(state: DownloadedState, shapes: list[tuple[int, ...]], max_epoch: int | None) -> str | None:
    if len(state.parameters) != len(shapes):
        return f"sent {len(state.parameters)} tensors, the run's shard has {len(shapes)}"
    for index, (tensor, shape) in enumerate(zip(state.parameters, shapes)):
        if tuple(tensor.shape) != tuple(shape):
            return f"tensor {index} has shape {tuple(tensor.shape)}, the run's spec gives {tuple(shape)}"
        if not torch.isfinite(tensor).all():
            return f"tensor {index} holds non-finite values"
    if max_epoch is not None and state.epoch > max_epoch:
        return (f"claims epoch {state.epoch}, beyond {max_epoch} (the median epoch of the authorized peers' "
                f"progress records plus max_epoch_lead)")
    return None


@dataclass(frozen=True)
class StateChoice:
    chosen: list[DownloadedState]  # agreeing states, the one used first
    excluded: list[tuple[str, str]]  # (peer, why) for every other peer
    valid: int  # how many states were well-formed, finite and within the epoch bound

    @property
    def cross_checked(self) -> bool:
        return len(self.chosen) >= 2


def choose_agreeing_state(states: list[DownloadedState], shapes: list[tuple[int, ...]], policy: PublishPolicy,
                          serving: int = 0, max_epoch: int | None = None) -> StateChoice:
    """The peers whose states to trust, and every other peer with the reason it was left out.

    Invalid states (wrong count or shapes, non-finite values, an epoch beyond ``max_epoch``) are left out
    first; they cast no vote. Among the rest, the largest group of peers agreeing with one of them (within
    ``policy.epoch_window`` epochs of it) wins if it is a strict majority of all ``serving`` authorized peers
    (at least those that sent a state) less the invalid ones; that peer's state is used. Peers that did not
    answer still count: colluders cannot win by making honest peers look absent. With no such majority nothing
    can be trusted (``NoMajority``). A single state is used only when it is the only authorized peer serving.
    """
    excluded, valid = [], []
    for state in states:
        problem = _problem_with(state, shapes, max_epoch)
        if problem:
            excluded.append((state.peer_id, problem))
        else:
            valid.append(state)
    if not valid:
        raise SnapshotError("no peer served a usable state: " + "; ".join(f"{p}: {why}" for p, why in excluded))
    voters = max(serving, len(states)) - len(excluded)
    ordered = sorted(valid, key=lambda state: -state.epoch)  # stable: by sharing priority within an epoch
    clusters = [[other for other in ordered if abs(other.epoch - one.epoch) <= policy.epoch_window
                 and tensors_agree(one.parameters, other.parameters, policy)] for one in ordered]
    best_index = max(range(len(ordered)), key=lambda index: len(clusters[index]))  # ties: the most trained
    center, best = ordered[best_index], clusters[best_index]
    if 2 * len(best) <= voters:
        raise NoMajority(f"the {voters} authorized peers serving the shard disagree and no majority agrees: the "
                         f"largest agreeing group has {len(best)} ({', '.join(state.peer_id for state in best)}, "
                         f"epoch {center.epoch})")
    chosen = [center] + [state for state in best if state is not center]
    for state in ordered:
        if any(state is other for other in chosen):
            continue
        if abs(state.epoch - center.epoch) > policy.epoch_window:
            side = "behind" if state.epoch < center.epoch else "ahead of"
            why = f"at epoch {state.epoch}, {side} the compared epoch {center.epoch}"
        else:
            why = f"its state disagrees with the majority of {voters} authorized peers at epoch {center.epoch}"
        excluded.append((state.peer_id, why))
    return StateChoice(chosen, excluded, len(valid))


def state_candidates(hinted: list[str], authorized: Collection[str], cap: int) -> list[str]:
    """The authorized peers to ask, those advertising their state first (most trained first), at most ``cap``."""
    allowed = set(authorized)
    listed = [peer for peer in hinted if peer in allowed]
    return (listed + sorted(allowed - set(listed)))[:cap]


def fetch_shard_snapshot(dht: hivemind.DHT, shard_run_id: str, shard: int, names: list[str],
                         shapes: list[tuple[int, ...]], timeout: float, policy: PublishPolicy,
                         authorized: Collection[str], max_epoch: int | None = None,
                         max_bytes: int = 2**30) -> ShardSnapshot:
    """Download one shard's averaged LoRA tensors from its authorized peers (at most ``policy.compare_peers``,
    each download capped at ``max_bytes``) and keep the state a majority agrees on (``choose_agreeing_state``);
    peers left out are logged."""
    for attempt in range(policy.attempts):
        hinted = list_state_sharers(dht, shard_run_id)
        candidates = state_candidates(hinted, authorized, policy.compare_peers)
        listed = set(hinted)
        if not candidates:
            raise NothingToSnapshot(f"shard {shard} ({shard_run_id}) has no authorized peer (no live registered "
                                    f"worker)")
        states: list[DownloadedState] = []
        errors: list[str] = []
        for peer_id in candidates:
            wait = timeout if peer_id in listed else min(timeout, policy.unlisted_timeout_s)
            try:
                states.append(download_state(dht, shard_run_id, peer_id, num_parameters=len(names), timeout=wait,
                                             max_bytes=max_bytes))
            except StateDownloadError as exc:
                errors.append(str(exc))
        if not states:
            if not listed & set(candidates):
                raise NothingToSnapshot(f"no authorized peer serves the state of shard {shard} ({shard_run_id}) "
                                        f"yet: " + "; ".join(errors))
            raise SnapshotError(f"no authorized peer of shard {shard} sent its state: " + "; ".join(errors))
        serving = {state.peer_id for state in states} | (listed & set(candidates))
        try:
            choice = choose_agreeing_state(states, shapes, policy, serving=len(serving), max_epoch=max_epoch)
        except NoMajority:
            if attempt + 1 < policy.attempts:
                time.sleep(policy.retry_pause_s)  # peers may straddle an epoch boundary: compare them again shortly
                continue
            raise
        for error in errors:
            logger.warning("shard %d: %s", shard, error)
        for peer_id, why in choice.excluded:
            logger.warning("shard %d: not using the state of peer %s: %s", shard, peer_id, why)
        used = choice.chosen[0]
        return ShardSnapshot(shard, used.epoch, used.peer_id, dict(zip(names, used.parameters)),
                             tuple(state.peer_id for state in choice.chosen), tuple(choice.excluded))
    raise AssertionError("unreachable")
