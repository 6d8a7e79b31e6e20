"""Workers never follow an epoch liar: with a peer process (tests/fake_peer.py) publishing a progress record signed
with its own key at epoch 10**6, two honest workers (real ShardOptimizers training the tiny model on loopback)
keep their own epochs and do not download state again and again."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import tempfile
from pathlib import Path

import torch
from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.p2p import PeerID

from swarm.data import load_texts
from swarm.dht import progress_validators, read_shard_progress, start_dht, visible_addresses
from swarm.identity import load_or_create_identity
from swarm.progress_filter import SignedProgress, TrustedProgressTracker, filter_progress
from swarm.spec import AveragingSpec, RunSpec
from tests.test_snapshot_trust import _first_line
from worker.model_setup import build_run_model
from worker.shard_optimizers import make_shard_optimizer
from worker.training import TrainingLimits, TrainingLoop

SPEC = RunSpec(name="liar", batch_size_per_step=4, target_batch_size=16, data_slices=1,
               averaging=AveragingSpec(matchmaking_time=1.0, averaging_timeout=10.0, progress_refresh_s=0.5))
LIAR_EPOCH = 10**6


class Counter(logging.Handler):
    """Counts the workers' "loading state from peers" log lines (each is one state download)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "loading state from peers" in record.getMessage():
            self.loads += 1


def test_honest_workers_do_not_jump_to_a_liars_epoch_nor_keep_downloading_state(tmp_path):
    identities = [load_or_create_identity(tmp_path / f"worker{i}.key") for i in range(2)]
    first = start_dht(identity_path=str(identities[0].path))
    second = start_dht(visible_addresses(first), identity_path=str(identities[1].path))
    liar = subprocess.Popen([sys.executable, "-m", "tests.fake_peer", "--initial-peer", visible_addresses(first)[0],
                             "--run-id", SPEC.shard_run_id(0), "--identity", str(tmp_path / "liar.key"),
                             "--progress-epoch", str(LIAR_EPOCH), "--samples-per-second", "5.0"],
                            stdout=subprocess.PIPE, text=True)
    counter = Counter()
    logging.getLogger("nomoat.worker.shard_optimizers").addHandler(counter)
    optimizers = []
    try:
        liar_id = _first_line(liar, timeout=90)
        assert liar_id
        first.add_validators(progress_validators(SPEC.shard_run_id(0), identities[0].as_hivemind_key()))
        deadline = time.monotonic() + 30
        while not any(r.peer_id == liar_id and r.progress.epoch == LIAR_EPOCH
                      for r in read_shard_progress(first, SPEC.shard_run_id(0))):
            assert time.monotonic() < deadline, "the liar's record never appeared"
            time.sleep(0.3)
        models = [build_run_model(SPEC) for _ in range(2)]
        for model, dht, identity in zip(models, (first, second), identities):
            optimizers.append(make_shard_optimizer(SPEC, 0, model.shard_parameters(0), dht,
                                                   identity.as_hivemind_key(), verbose=False))
        texts = load_texts("sample")[:200]
        loops = [TrainingLoop(SPEC, model, {0: optimizer}, texts, torch.device("cpu"), on_report=lambda _: None,
                              report_interval_s=1.0) for model, optimizer in zip(models, optimizers)]
        summaries: list = [None, None]

        def train(index: int) -> None:
            summaries[index] = loops[index].run(TrainingLimits(max_seconds=25))

        threads = [threading.Thread(target=train, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert all(summary is not None and summary.steps > 0 for summary in summaries)
        epochs = [optimizer.local_epoch for optimizer in optimizers]
        assert all(1 <= epoch < 1000 for epoch in epochs), epochs  # they trained on, at their own pace
        assert all(optimizer.tracker.global_epoch < 1000 for optimizer in optimizers)
        assert counter.loads <= 2, counter.loads  # at most a catch-up each, not one per epoch
    finally:
        logging.getLogger("nomoat.worker.shard_optimizers").removeHandler(counter)
        for optimizer in optimizers:
            optimizer.shutdown()
        liar.terminate()
        liar.wait(timeout=30)
        second.shutdown()
        first.shutdown()


def test_in_a_gated_swarm_a_peer_without_the_runs_token_cannot_make_the_workers_step(tmp_path):
    """A record at the workers' own epoch claiming a whole epoch's samples would make every worker step at once
    (hivemind's tracker sums the samples of the current epoch); with the run's gate it counts for nothing."""
    identity = load_or_create_identity(tmp_path / "worker.key")
    dht = start_dht(identity_path=str(identity.path))
    stranger = subprocess.Popen([sys.executable, "-m", "tests.fake_peer", "--initial-peer", visible_addresses(dht)[0],
                                 "--run-id", SPEC.shard_run_id(0), "--identity", str(tmp_path / "stranger.key"),
                                 "--progress-epoch", "0", "--samples", str(10**9)], stdout=subprocess.PIPE, text=True)
    trackers = []
    try:
        stranger_id = _first_line(stranger, timeout=90)
        assert stranger_id
        for peer_allowed in (None, lambda peer: peer != stranger_id):
            trackers.append(TrustedProgressTracker(dht=dht, prefix=SPEC.shard_run_id(0), target_batch_size=1000,
                                                   start=True, private_key=identity.as_hivemind_key(),
                                                   min_refresh_period=0.2, default_refresh_period=0.5,
                                                   peer_allowed=peer_allowed))
        ungated, gated = trackers
        deadline = time.monotonic() + 30
        while ungated.global_progress.samples_accumulated < 10**9:
            assert time.monotonic() < deadline, "the stranger's record never reached the tracker"
            time.sleep(0.3)
        assert ungated.ready_to_update_epoch  # without the gate the stranger decides when everyone steps
        assert gated.global_progress.samples_accumulated == 0 and not gated.ready_to_update_epoch
    finally:
        for tracker in trackers:
            tracker.shutdown()
        stranger.terminate()
        stranger.wait(timeout=30)
        dht.shutdown()


def _record(epoch: int) -> SignedProgress:
    """A plausible progress record at ``epoch`` of a fresh peer, signed by that peer's own key."""
    with tempfile.TemporaryDirectory() as folder:
        peer = PeerID.from_base58(load_or_create_identity(Path(folder) / "peer.key").peer_id)
    progress = LocalTrainingProgress(peer_id=peer.to_bytes(), epoch=epoch, samples_accumulated=0,
                                     samples_per_second=1.0, time=time.time(), client_mode=False)
    return SignedProgress(peer.to_base58(), progress)


def test_a_worker_behind_two_agreeing_peers_follows_them_but_not_a_lone_liar():
    """Its own epoch counts once in the median, its own DHT record included: counted twice, a worker that rejoined
    three epochs behind two peers out-voted them and trained alone ever after (seen in test_faults)."""
    own, ahead = _record(4), [_record(7), _record(7)]
    kept, dropped = filter_progress([own, *ahead], max_epoch_lead=2, own_epoch=4, own_peer_id=own.peer_id)
    assert {record.peer_id for record in kept} == {own.peer_id, *(record.peer_id for record in ahead)}, dropped
    liar, honest = _record(LIAR_EPOCH), _record(4)
    kept, dropped = filter_progress([own, honest, liar], max_epoch_lead=2, own_epoch=4, own_peer_id=own.peer_id)
    assert [record.peer_id for record, _ in dropped] == [liar.peer_id]
    # at start-up, with no record of its own yet and only the liar's in the DHT, its own epoch still out-votes it
    kept, dropped = filter_progress([liar], max_epoch_lead=2, own_epoch=0, own_peer_id=own.peer_id)
    assert not kept and "beyond 2" in dropped[0][1]
