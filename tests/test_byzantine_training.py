"""Issue 11's definition of done: three honest peers and one Byzantine peer (NaN, x1000, sign-flipped and
random gradients, in turn) train the built-in tiny model with real hivemind peers on loopback; the honest peers'
parameters stay finite, an honest peer's final LoRA scores within 1% of the eval loss of the same run with four
honest peers, and the refusals are counted against the Byzantine peer. With hivemind's plain ``mean`` the attack
visibly hurts."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import torch

from byzantine_peer import ByzantineTrainingLoop
from swarm.data import data_slice, load_texts, split_dataset
from swarm.dht import start_dht, visible_addresses
from swarm.evaluation import eval_loss
from swarm.identity import load_or_create_identity
from swarm.spec import AveragingSpec, RobustnessSpec, RunSpec
from worker.model_setup import build_run_model
from worker.training import TrainingLimits, TrainingLoop
from worker.shard_optimizers import make_shard_optimizer

PEERS = 4
EPOCHS = 8
BYZANTINE = PEERS - 1  # the index of the attacker, when there is one


def run_spec(aggregator: str) -> RunSpec:
    return RunSpec(name=f"byz-{aggregator.replace('_', '-')}", batch_size_per_step=4, target_batch_size=32,
                   data_slices=PEERS, lr=3e-3,
                   averaging=AveragingSpec(matchmaking_time=1.5, averaging_timeout=12.0, average_state_every=4),
                   robustness=RobustnessSpec(aggregator=aggregator))


@dataclass
class SwarmOutcome:
    eval_losses: list[float]  # per honest peer, its final LoRA on the run's eval split
    finite: bool  # every honest peer's parameters are finite
    rejections: list[tuple[str, str]]  # what the honest peers refused, (peer id, reason)
    byzantine_peer: str
    epochs: list[int]


def train_swarm(tmp_path, spec: RunSpec, attack: str | None) -> SwarmOutcome:
    """Four peers, each with its own DHT, training in threads of this process until epoch EPOCHS."""
    split = split_dataset(load_texts(spec.dataset), spec.eval_fraction, spec.seed)
    identities = [load_or_create_identity(tmp_path / f"{spec.name}-{attack}-{i}.key") for i in range(PEERS)]
    dhts = [start_dht(identity_path=str(identities[0].path))]
    dhts += [start_dht(visible_addresses(dhts[0]), identity_path=str(identity.path)) for identity in identities[1:]]
    models = [build_run_model(spec) for _ in range(PEERS)]
    optimizers = []
    try:
        for model, dht, identity in zip(models, dhts, identities):
            optimizers.append(make_shard_optimizer(spec, 0, model.shard_parameters(0), dht,
                                                   identity.as_hivemind_key(), verbose=False))
        loops = []
        for i, (model, optimizer) in enumerate(zip(models, optimizers)):
            options = dict(show_progress=False, data_seed=i, sync_peers=PEERS, sync_timeout_s=30.0)
            texts = data_slice(split.train, PEERS, i)
            if attack is not None and i == BYZANTINE:
                loops.append(ByzantineTrainingLoop(spec, model, {0: optimizer}, texts, torch.device("cpu"),
                                                   attack=attack, **options))
            else:
                loops.append(TrainingLoop(spec, model, {0: optimizer}, texts, torch.device("cpu"), **options))
        threads = [threading.Thread(target=loop.run, args=(TrainingLimits(max_epochs=EPOCHS, max_seconds=120),))
                   for loop in loops]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        honest = range(BYZANTINE) if attack is not None else range(PEERS)
        rejections = [rejection for i in honest for rejection in optimizers[i].drain_rejections()]
        return SwarmOutcome(
            eval_losses=[eval_loss(models[i].model, split.eval, models[i].tokenizer, spec.seq_len) for i in honest],
            finite=all(bool(torch.isfinite(param).all()) for i in honest for param in models[i].shard_parameters(0)),
            rejections=rejections, byzantine_peer=dhts[BYZANTINE].peer_id.to_base58(),
            epochs=[optimizer.local_epoch for optimizer in optimizers])
    finally:
        for optimizer in optimizers:
            optimizer.shutdown()
        for dht in dhts:
            dht.shutdown()


@pytest.fixture(scope="module")
def honest_swarm(tmp_path_factory) -> SwarmOutcome:
    return train_swarm(tmp_path_factory.mktemp("honest"), run_spec("trimmed_mean"), attack=None)


def test_three_honest_peers_train_as_well_as_four_despite_one_byzantine_peer(tmp_path, honest_swarm):
    """The attacker sends NaN, x1000, sign-flipped and random gradients in turn (two epochs of each)."""
    attacked = train_swarm(tmp_path, run_spec("trimmed_mean"), attack="cycle")
    print(f"honest swarm {honest_swarm.eval_losses} {honest_swarm.epochs}, attacked {attacked.eval_losses} "
          f"{attacked.epochs}, refusals {sorted(set(attacked.rejections))}")
    assert honest_swarm.finite and attacked.finite
    reference = honest_swarm.eval_losses[0]
    for loss in attacked.eval_losses:
        assert abs(loss - reference) <= 0.01 * reference
    # NaN and x1000 parts are screened out by every honest reducer; sign flips and noise inside the norm bound
    # are disarmed by the aggregator. The refusals are (nearly all) against the attacker: an honest part is
    # now and then refused for its norm (seen once in several runs), which the coordinator's ban threshold
    # (repeat reports from two peers) is there to absorb.
    assert (attacked.byzantine_peer, "part_non_finite") in attacked.rejections
    assert (attacked.byzantine_peer, "part_norm") in attacked.rejections
    against_attacker = sum(peer == attacked.byzantine_peer for peer, _ in attacked.rejections)
    assert against_attacker >= 0.8 * len(attacked.rejections)


def test_with_hiveminds_plain_mean_the_attack_visibly_hurts(tmp_path, honest_swarm):
    """The comparison above is meaningful: the same sign-flip attack, averaged with mean, costs far over 1%."""
    attacked = train_swarm(tmp_path, run_spec("mean"), attack="sign_flip")
    print(f"mean + sign_flip: honest swarm {honest_swarm.eval_losses}, attacked {attacked.eval_losses}")
    assert min(attacked.eval_losses) > 1.02 * honest_swarm.eval_losses[0]
