"""Local mode (DiLoCo): workers take local optimizer steps and average pseudo-gradients once per epoch, with an
outer Nesterov step. Real hivemind peers on loopback train the built-in tiny model; after the rounds every peer
holds the same outer parameters, the loss falls, and a late joiner downloads exactly those (with the outer
momentum). The outer step is checked against torch's Nesterov SGD; the timeouts against the link arithmetic."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
import torch

from coordinator.publish_policy import PublishPolicy
from coordinator.snapshot_choice import tensors_agree
from swarm.data import data_slice, load_texts, split_dataset
from swarm.dht import start_dht, visible_addresses
from swarm.evaluation import eval_loss
from swarm.identity import load_or_create_identity
from swarm.round_timeouts import round_timeouts
from swarm.spec import AveragingSpec, RunSpec, SpecError, build_spec
from worker.local_updates import LocalUpdateShardOptimizer, factor_of, resting_factor
from worker.model_setup import build_run_model
from worker.outer_step import OuterStepStateAverager
from worker.shard_optimizers import make_shard_optimizer
from worker.training import TrainingLimits, TrainingLoop

PEERS = 2
EPOCHS = 6


def local_spec(**averaging) -> RunSpec:
    options = dict(mode="local", matchmaking_time=1.5, averaging_timeout=15.0, progress_refresh_s=0.5)
    return RunSpec(name="local", batch_size_per_step=4, target_batch_size=32, data_slices=PEERS, lr=3e-3,
                   averaging=AveragingSpec(**{**options, **averaging}))


def test_the_resting_factor_alternates_starting_with_a_and_freeze_a_always_rests_a():
    assert [resting_factor("alternate", epoch) for epoch in range(4)] == ["A", "B", "A", "B"]
    assert {resting_factor("freeze_a", epoch) for epoch in range(4)} == {"A"}
    assert resting_factor("both", 3) == ""
    assert factor_of("base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight") == "A"
    assert factor_of("base_model.model.layers.0.self_attn.q_proj.lora_B.default.weight") == "B"
    assert factor_of("flat") == ""


def test_round_timeouts_fit_the_payload_at_the_runs_link_rate():
    eight_b_all = 42_000_000  # the rank-16 all-module LoRA of Llama-3.1-8B: 168 MB in fp32
    home = round_timeouts(eight_b_all, AveragingSpec(link_mbit=10))
    assert home.transfer == pytest.approx(2 * 168e6 * 8 / 10e6)  # out and back, at 10 Mbit/s
    assert home.averaging > 2 * home.transfer and home.next_chunk >= home.transfer
    assert round_timeouts(eight_b_all, AveragingSpec(link_mbit=10, compression="fp16")).transfer == \
        pytest.approx(home.transfer / 2)
    tiny = round_timeouts(10_000, AveragingSpec())
    assert (tiny.averaging, tiny.next_chunk) == (30.0, 30.0)  # a small payload keeps the spec's own timeout


def test_local_mode_fields_leave_a_sync_runs_hash_alone_and_8bit_is_local_only():
    sync = RunSpec(name="x")
    assert set(json.loads(sync.to_json())["averaging"]) == {"matchmaking_time", "averaging_timeout",
                                                            "average_state_every", "progress_refresh_s"}
    assert RunSpec(name="x", averaging=AveragingSpec(mode="local")).content_hash != sync.content_hash
    with pytest.raises(SpecError, match="8bit"):
        build_spec({"name": "x", "averaging": {"compression": "8bit"}})
    assert build_spec({"name": "x", "averaging": {"mode": "local", "compression": "8bit"}}).averaging.mode == "local"


def test_the_outer_step_is_torchs_nesterov_sgd_on_the_pseudo_gradient_and_keeps_local_progress(tmp_path):
    dht = start_dht()
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    averager = OuterStepStateAverager(dht=dht, prefix="outer_check", optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                                      params=params, robustness=local_spec().robustness, outer_lr=0.7,
                                      outer_momentum=0.9, start=True)
    try:
        reference = [param.detach().clone().requires_grad_(True) for param in params]
        reference_opt = torch.optim.SGD(reference, lr=0.7, momentum=0.9, nesterov=True)
        for _ in range(3):  # three rounds: the momentum matters from the second on
            with torch.no_grad():
                for param in params:
                    param.add_(torch.randn_like(param) * 0.1)  # this round's local steps
            pseudo = [ref.detach() - param.detach() for ref, param in zip(reference, params)]
            averager.outer_step_alone()
            for ref, gradient in zip(reference, pseudo):
                ref.grad = gradient.clone()
            reference_opt.step()
            for ref, outer, param in zip(reference, averager.outer_parameters or [], params):
                assert torch.allclose(outer, ref.detach(), atol=1e-6)
                assert torch.allclose(param.detach(), outer, atol=1e-6)  # no local step since the round began
    finally:
        averager.shutdown()
        dht.shutdown()


def train_together(spec: RunSpec, split, models, optimizers) -> None:
    """Each peer trains its own slice of the train split in a thread of this process, until epoch EPOCHS."""
    peers = len(models)
    loops = [TrainingLoop(spec, models[i], {0: optimizers[i]}, data_slice(split.train, peers, i),
                          torch.device("cpu"), show_progress=False, data_seed=i, sync_peers=peers,
                          sync_timeout_s=30.0) for i in range(peers)]
    threads = [threading.Thread(target=loop.run, args=(TrainingLimits(max_epochs=EPOCHS, max_seconds=120),))
               for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture(scope="module")
def local_swarm(tmp_path_factory):
    """Two local-mode peers (overlapped rounds, DiLoCo's Nesterov outer step, alternating factors, fp16) trained
    to epoch EPOCHS; yields them still running so that a late joiner can download their state (and momentum)."""
    tmp_path = tmp_path_factory.mktemp("local")
    spec = local_spec(compression="fp16", outer_lr=0.7, outer_momentum=0.9, lora_factors="alternate")
    split = split_dataset(load_texts(spec.dataset), spec.eval_fraction, spec.seed)
    identities = [load_or_create_identity(tmp_path / f"peer{i}.key") for i in range(PEERS + 1)]
    dhts = [start_dht(identity_path=str(identities[0].path))]
    dhts += [start_dht(visible_addresses(dhts[0]), identity_path=str(identity.path)) for identity in identities[1:]]
    models = [build_run_model(spec) for _ in range(PEERS + 1)]
    base_loss = eval_loss(models[0].model, split.eval, models[0].tokenizer, spec.seq_len)
    optimizers = []
    try:
        for model, dht, identity in zip(models, dhts, identities):
            optimizers.append(make_shard_optimizer(spec, 0, model.shard_parameters(0), dht,
                                                   identity.as_hivemind_key(), verbose=False,
                                                   param_names=model.shard_names[0]))
        train_together(spec, split, models[:PEERS], optimizers[:PEERS])
        for optimizer in optimizers[:PEERS]:
            optimizer.state_averager.step(wait_for_delayed_updates=True)  # the last round lands
        yield spec, split, models, optimizers, base_loss
    finally:
        for optimizer in optimizers:
            optimizer.shutdown()
        for dht in dhts:
            dht.shutdown()


def test_local_mode_peers_end_with_the_same_outer_parameters_and_a_lower_loss(local_swarm):
    spec, split, models, optimizers, base_loss = local_swarm
    peers: list[LocalUpdateShardOptimizer] = optimizers[:PEERS]  # type: ignore[assignment]
    assert all(isinstance(optimizer, LocalUpdateShardOptimizer) for optimizer in peers)
    assert all(optimizer.local_epoch >= EPOCHS for optimizer in peers), [o.local_epoch for o in peers]
    first, second = (optimizer.outer_parameters() for optimizer in peers)
    counts = [optimizer.state_averager.round_counts for optimizer in peers]
    assert all(count["averaged"] >= EPOCHS - 2 and not count["failed"] for count in counts), counts
    moved = sum(float((a - b.detach()).abs().max()) for a, b in zip(first, models[PEERS].shard_parameters(0)))
    assert moved > 1e-3  # the rounds moved the outer parameters away from the initialisation
    for a, b in zip(first, second):  # fp16 travel: the deltas each peer receives are rounded on their own
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3), float((a - b).abs().max())
    # publish what the swarm agrees on: the outer parameters, loaded into a model
    with torch.no_grad():
        for param, outer in zip(models[0].shard_parameters(0), first):
            param.copy_(outer)
    loss = eval_loss(models[0].model, split.eval, models[0].tokenizer, spec.seq_len)
    print(f"local mode: base {base_loss:.4f} -> {loss:.4f} after {peers[0].local_epoch} rounds {counts}")
    assert loss < base_loss - 0.05


def test_a_late_joiner_downloads_the_outer_parameters_and_momentum(local_swarm):
    spec, split, models, optimizers, base_loss = local_swarm
    late: LocalUpdateShardOptimizer = optimizers[PEERS]  # type: ignore[assignment]
    source: LocalUpdateShardOptimizer = optimizers[0]  # type: ignore[assignment]
    late.load_state_from_peers()
    assert late.local_epoch >= EPOCHS
    for mine, theirs, param in zip(late.outer_parameters(), source.outer_parameters(),
                                   models[PEERS].shard_parameters(0)):
        assert torch.allclose(mine, theirs, atol=1e-4, rtol=1e-3)
        assert torch.equal(param.detach(), mine)  # it trains on from the swarm's outer parameters
    momentum = [late.state_averager._momentum_buffer(outer) for outer in late.outer_parameters()]
    assert sum(float(buffer.abs().sum()) for buffer in momentum) > 0


class SignFlippingOuterAverager(OuterStepStateAverager):
    """A Byzantine peer's averager: it sends -8x its pseudo-gradient, or NaN every other round."""

    def _load_local_tensors_into_averager_(self) -> None:
        super()._load_local_tensors_into_averager_()
        if self.outer_parameters is None:
            return
        with torch.no_grad(), self.get_tensors() as averaged:
            for buffer in averaged:
                buffer.mul_(-8.0) if self.local_epoch % 2 else buffer.fill_(float("nan"))


class ByzantineLocalOptimizer(LocalUpdateShardOptimizer):
    state_averager_class = SignFlippingOuterAverager


def test_a_byzantine_peers_pseudo_gradients_are_not_averaged_in(tmp_path, monkeypatch):
    """Three local-mode peers, one sending NaN and sign-flipped (x8) pseudo-gradients: the two honest peers keep
    finite outer parameters that agree with each other (within the publisher's tolerance), refuse the
    attacker's parts, and still learn."""
    import worker.local_updates

    spec = local_spec()
    peers = 3
    split = split_dataset(load_texts(spec.dataset), spec.eval_fraction, spec.seed)
    identities = [load_or_create_identity(tmp_path / f"peer{i}.key") for i in range(peers)]
    dhts = [start_dht(identity_path=str(identities[0].path))]
    dhts += [start_dht(visible_addresses(dhts[0]), identity_path=str(identity.path)) for identity in identities[1:]]
    models = [build_run_model(spec) for _ in range(peers)]
    base_loss = eval_loss(models[0].model, split.eval, models[0].tokenizer, spec.seq_len)
    optimizers = []
    try:
        for index, (model, dht, identity) in enumerate(zip(models, dhts, identities)):
            if index == peers - 1:
                monkeypatch.setattr(worker.local_updates, "LocalUpdateShardOptimizer", ByzantineLocalOptimizer)
            optimizers.append(make_shard_optimizer(spec, 0, model.shard_parameters(0), dht,
                                                   identity.as_hivemind_key(), verbose=False,
                                                   param_names=model.shard_names[0]))
        train_together(spec, split, models, optimizers)
        honest: list[LocalUpdateShardOptimizer] = optimizers[:2]  # type: ignore[assignment]
        for optimizer in honest:
            optimizer.settle()
        attacker = dhts[-1].peer_id.to_base58()
        rejections = [rejection for optimizer in honest for rejection in optimizer.drain_rejections()]
        first, second = (optimizer.outer_parameters() for optimizer in honest)
        assert all(bool(torch.isfinite(tensor).all()) for tensor in [*first, *second])
        # they agree as the publisher requires of the peers it snapshots. Not to the last bit: a catching-up peer
        # may download the attacker's state, and an averaged part one honest peer refuses for its norm another
        # may accept (each checks against its own part)
        policy = replace(PublishPolicy(), step_size=spec.lr)
        assert tensors_agree(first, second, policy), [float((a - b).abs().max()) for a, b in zip(first, second)]
        assert (attacker, "part_non_finite") in rejections, rejections
        loss = eval_loss(models[0].model, split.eval, models[0].tokenizer, spec.seq_len)
        print(f"local mode with a Byzantine peer: base {base_loss:.4f} -> {loss:.4f}, refusals "
              f"{sorted(set(rejections))}, rounds {[o.state_averager.round_counts for o in honest]}")
        assert loss < base_loss - 0.05
    finally:
        for optimizer in optimizers:
            optimizer.shutdown()
        for dht in dhts:
            dht.shutdown()


def test_8bit_parts_decode_under_numpy_2():
    """hivemind 1.1's 8-bit decoder raises TypeError under NumPy 2 (every part would be refused while the round
    looks averaged); the compression nomoat hands hivemind comes with a decoder that works."""
    from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
    from hivemind.proto.runtime_pb2 import CompressionType

    from swarm.compression import averaging_compression

    averaging_compression("8bit")
    tensor = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    decoded = deserialize_torch_tensor(serialize_torch_tensor(tensor, CompressionType.UNIFORM_8BIT))
    assert decoded.shape == tensor.shape
    assert float((decoded - tensor).norm() / tensor.norm()) < 0.05  # 256 levels (measured: 2.4%)


def test_a_compressed_round_leaves_every_peer_with_the_same_outer_parameters():
    """With 8-bit compression each peer adding its own rounding of its own delta left the peers up to 0.1 apart
    after one round; the reducers send the compressed average itself and use it for their own span too."""
    from concurrent.futures import ThreadPoolExecutor

    from swarm.compression import averaging_compression

    first = start_dht()
    dhts = [first, start_dht(visible_addresses(first))]
    generator = torch.Generator().manual_seed(3)
    params = [[torch.nn.Parameter(torch.randn(50_000, generator=generator) * 0.05)] for _ in dhts]
    start = params[0][0].detach().clone()
    for peer in params:  # both peers start a round from the same outer parameters
        peer[0].data.copy_(start)
    averagers = [OuterStepStateAverager(dht=dht, prefix="eightbit", optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                                        params=peer, robustness=local_spec().robustness, outer_lr=1.0,
                                        outer_momentum=0.0, compression=averaging_compression("8bit"),
                                        min_matchmaking_time=2.0, request_timeout=1.0, target_group_size=2,
                                        start=True)
                 for dht, peer in zip(dhts, params)]
    try:
        with torch.no_grad():
            for peer in params:  # each peer's local steps
                peer[0].add_(torch.randn(50_000, generator=generator) * 0.01)
        expected = (params[0][0].detach() + params[1][0].detach()) / 2

        def round_of(averager: OuterStepStateAverager) -> None:
            averager.begin_round()
            averager.step(increment_epoch=True, averaging_round=True, averaging_opts=dict(timeout=30))

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(round_of, averagers))
        assert [averager.round_counts["averaged"] for averager in averagers] == [1, 1]
        outer = [averager.outer_parameters[0] for averager in averagers]  # type: ignore[index]
        assert float((outer[0] - outer[1]).abs().max()) < 1e-6
        assert float((outer[0] - expected).norm() / (expected - start).norm()) < 0.1  # 8-bit of the change
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts:
            dht.shutdown()
