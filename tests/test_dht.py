"""DHT progress records on real loopback peers: a worker's hivemind.Optimizer signs them with the worker's
identity key, passed explicitly (hivemind's process-wide key is left alone), so the coordinator's parser sees
them as the worker's own; a record signed by another key than the one its peer ID derives from is skipped (it
used to be read as an "unbound" record: anyone could then speak for a victim)."""

from __future__ import annotations

import time

import torch
from hivemind.optim.progress_tracker import ProgressTracker
from hivemind.utils.crypto import RSAPrivateKey

from swarm.dht import progress_validators, read_shard_progress, start_dht, visible_addresses
from swarm.identity import load_or_create_identity
from swarm.spec import RunSpec
from worker.shard_optimizers import make_shard_optimizer, wait_for_peers


def _public(key: RSAPrivateKey) -> bytes:
    return key.get_public_key().to_bytes()


def _records_of(dht, shard_run_id: str, peers: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while len(records := read_shard_progress(dht, shard_run_id)) < peers:
        assert time.monotonic() < deadline, records
        time.sleep(0.2)
    return {record.peer_id: record for record in records}


def test_progress_records_are_signed_by_the_worker_identity_key(tmp_path):
    coordinator_identity = load_or_create_identity(tmp_path / "coordinator.key")
    worker_identity = load_or_create_identity(tmp_path / "worker.key")
    mallory_identity = load_or_create_identity(tmp_path / "mallory.key")
    spec = RunSpec(name="keys", batch_size_per_step=4, target_batch_size=10_000)
    shard_run_id = spec.shard_run_id(0)
    coordinator = start_dht(identity_path=str(coordinator_identity.path))
    coordinator.add_validators(progress_validators(shard_run_id, coordinator_identity.as_hivemind_key()))
    worker = start_dht(visible_addresses(coordinator), identity_path=str(worker_identity.path))
    mallory = start_dht(visible_addresses(coordinator), identity_path=str(mallory_identity.path))
    eve_identity = load_or_create_identity(tmp_path / "eve.key")
    eve = start_dht(visible_addresses(coordinator), identity_path=str(eve_identity.path))
    optimizer = tracker = own_tracker = None
    try:
        param = torch.nn.Parameter(torch.zeros(8))
        optimizer = make_shard_optimizer(spec, 0, [param], worker, worker_identity.as_hivemind_key(), verbose=False)
        param.grad = torch.ones_like(param)
        assert optimizer.accumulate()  # reports 4 samples to the DHT
        # a peer whose records are signed by some other key than the one its peer ID derives from
        tracker = ProgressTracker(mallory, shard_run_id, spec.target_batch_size, private_key=RSAPrivateKey(),
                                  start=True)
        tracker.report_local_progress(local_epoch=0, samples_accumulated=3)
        # a peer signing its records with its own identity key
        own_tracker = ProgressTracker(eve, shard_run_id, spec.target_batch_size, start=True,
                                      private_key=eve_identity.as_hivemind_key())
        own_tracker.report_local_progress(local_epoch=0, samples_accumulated=2)

        records = _records_of(coordinator, shard_run_id, peers=2)
        assert set(records) == {worker_identity.peer_id, eve_identity.peer_id}  # mallory's is skipped
        assert records[eve_identity.peer_id].progress.samples_accumulated == 2
        own = records[worker_identity.peer_id]
        assert own.progress.samples_accumulated == 4 and own.progress.epoch == 0

        assert wait_for_peers(worker, spec, [0], peers=2, timeout=30)  # the worker reads the same records
        process_wide = RSAPrivateKey._process_wide_key  # never set to the identity key (no global patching)
        assert process_wide is None or _public(process_wide) != _public(worker_identity.as_hivemind_key())
    finally:
        for one in (tracker, own_tracker):
            if one is not None:
                one.shutdown()
        if optimizer is not None:
            optimizer.shutdown()
        for dht in (eve, mallory, worker, coordinator):
            dht.shutdown()
