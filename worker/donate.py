"""``swarm donate``: join a run through the coordinator, train the assigned shards with the swarm, report.

Usage::

    summary = donate(DonateConfig(coordinator=Endpoint("coord.example.org:50051", fingerprint="sha256:ab12..."),
                                  run="demo", limits=TrainingLimits(max_epochs=3)))
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from swarm.client import CoordinatorClient, Endpoint
from swarm.dht import start_dht
from swarm.identity import load_or_create_identity
from swarm.log import get_logger
from swarm.model import pick_device
from swarm.paths import UserDirs
from swarm.pull import fetch_stack
from swarm.receipts import Receipt, sign_receipt
from swarm.spec import RunSpec, parse_version_ref
from swarm.stop_signals import reinstall_stop_signals
from worker.fit_check import choose_precision
from worker.gradient_step import GradientStep
from worker.hand_over import hand_over_final_state
from worker.latest_version import start_from_latest_version
from worker.model_setup import build_run_model
from worker.outbox import Outbox, OutboxSender
from worker.shard_optimizers import ShardOptimizer, make_shard_optimizer, wait_for_peers
from worker.swarm_membership import SwarmMembership, authorizer_of, gate_of
from worker.training import ShardReport, TrainingLimits, TrainingLoop, TrainingSummary

logger = get_logger(__name__)
PROGRESS_STORE_S = 1.0  # a progress record reported now is in the DHT within this (hivemind stores it in the background)


@dataclass
class DonateConfig:
    """How one worker donates its time."""

    coordinator: str | Endpoint  # the coordinator's gRPC API: host:port, or an Endpoint with its TLS trust
    run: str = ""  # run name; empty: the coordinator's default run (refused when the operator set none)
    name: str = ""  # display name on the leaderboard
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_shards: int = 0  # train at most this many shards (0: all)
    host: str = "127.0.0.1"  # DHT listen address
    announce_host: str | None = None  # address other peers dial, when host is 0.0.0.0
    client_mode: bool = False  # behind NAT: dial out only, never accept connections
    identity: Path | None = None  # libp2p key file; default: user_dirs.identity_key (~/.config/nomoat/identity.key)
    user_dirs: UserDirs | None = None  # identity, trusted coordinator keys, pull cache; None: from XDG_* at donate()
    wait_for_peers: int = 1  # wait until this many peers (self included) serve each shard before training
    wait_timeout_s: float = 60.0
    limits: TrainingLimits = field(default_factory=TrainingLimits)
    show_progress: bool = True
    save_lora_to: Path | None = None  # write the final LoRA tensors here (torch.save), for inspection
    linger_s: float = 0.0  # after training, keep serving the averaged state to peers and the coordinator
    outbox: Path | None = None  # unsent receipts (SQLite); default: outbox-<peer id>.sqlite beside the identity
    drain_timeout_s: float = 30.0  # on exit, keep trying this long to deliver queued receipts
    join_token: str = ""  # a join token of the run, for a run that needs one (or for a private parent run)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | 8bit | 4bit (swarm.precision); auto: the best that fits
    micro_batch_size: int = 0  # samples per forward/backward (0: the run's batch_size_per_step at once)
    gradient_checkpointing: str = "auto"  # auto (on for CUDA, off for CPU) | on | off
    hand_over_timeout_s: float = 120.0  # on stop, wait this long for the coordinator to snapshot the final state
    # (0: leave without handing it over)

    def endpoint(self) -> Endpoint:
        """The coordinator's endpoint, presenting ``join_token`` if one is set."""
        endpoint = Endpoint.of(self.coordinator)
        return replace(endpoint, join_token=self.join_token) if self.join_token else endpoint


def donate(config: DonateConfig, stop: threading.Event | None = None) -> TrainingSummary:
    stop = stop or threading.Event()
    if config.gradient_checkpointing not in ("auto", "on", "off"):
        raise ValueError(f"gradient checkpointing is auto, on or off, not {config.gradient_checkpointing!r}")
    dirs = config.user_dirs or UserDirs.from_environment()
    identity = load_or_create_identity(config.identity or dirs.identity_key)
    device = pick_device(config.device)
    endpoint = config.endpoint()
    client = CoordinatorClient(endpoint)
    assignment = client.join(identity, run_name=config.run, display_name=config.name,
                             max_shards=config.max_shards, device=str(device))
    spec = RunSpec.from_json(assignment.spec_json)
    if spec.content_hash != assignment.spec_hash:
        raise RuntimeError(f"run spec hash mismatch: coordinator says {assignment.spec_hash}, "
                           f"spec hashes to {spec.content_hash}")
    logger.info("joined run %s as %s: shards %s, data slice %d/%d (%d samples)", spec.name, identity.peer_id,
                list(assignment.shards), assignment.data_slice, assignment.data_slices, assignment.slice_samples)
    parent_adapters: list[Path] = []
    if spec.parent:  # a stacked run trains on base + the parent chain, fetched verified from the coordinator
        parent_run, parent_version = parse_version_ref(spec.parent)
        _, parent_adapters = fetch_stack(endpoint, parent_run, parent_version, user_dirs=dirs)
        logger.info("run %s is stacked on %s: merging %d adapter(s) into the base model", spec.name, spec.parent,
                    len(parent_adapters))
    checkpointing = config.gradient_checkpointing == "on" or (config.gradient_checkpointing == "auto"
                                                                and device.type == "cuda")
    # before the base model is downloaded: will it fit this device, and in which precision?
    fit = choose_precision(spec, config.precision, device, config.micro_batch_size, checkpointing,
                           revision=assignment.base_model_revision or None)
    logger.info("training in %s%s%s", fit.precision.name, ", gradient checkpointing" if checkpointing else "",
                f" (needs {fit.estimate.describe()}; {fit.available_bytes / 1e9:.1f} GB free)" if fit.estimate else "")
    run_model = build_run_model(spec, expected_fingerprint=assignment.base_model_fingerprint,
                                parent_adapters=parent_adapters, revision=assignment.base_model_revision or None,
                                precision=fit.precision, device=device, gradient_checkpointing=checkpointing)
    texts = client.data_slice(spec.name, assignment.data_slice, assignment.worker_id)
    shards = list(assignment.shards)
    for shard in range(spec.shards):  # shards this worker does not train stay fixed
        if shard not in shards:
            for param in run_model.shard_parameters(shard):
                param.requires_grad_(False)
    # hivemind forks its DHT and averager processes; a live gRPC channel does not survive fork (its threads
    # and locks are copied mid-use and the children stall), so the channel is closed until they are started
    client.close()
    # the DHT runs under the identity key and the optimizers sign their progress records with it: the records
    # are then this peer ID's own, which lets the coordinator cross-check receipts against them
    signing_key = identity.as_hivemind_key()
    # only peers with an access token of the run's coordinator use this DHT; the Join's token lets this one in
    dht = start_dht(list(assignment.initial_peers), host=config.host, client_mode=config.client_mode,
                    announce_host=config.announce_host, identity_path=str(identity.path),
                    authorizer=authorizer_of(assignment, identity))
    optimizers: dict[int, ShardOptimizer] = {}
    outbox: Outbox | None = None
    sender: OutboxSender | None = None
    membership: SwarmMembership | None = None
    try:
        # published before the averagers start, so that peers' gates let this worker in from its first round
        membership = SwarmMembership(dht, assignment, identity, lambda: CoordinatorClient(endpoint))
        membership.publish()
        gate = gate_of(dht, assignment)  # the averagers deal only with the run's authorized peers
        # a shard nobody trains right now goes on from the run's latest version, not from the base model
        start = start_from_latest_version(endpoint, spec, run_model, shards, dht, dirs)
        optimizers = {shard: make_shard_optimizer(spec, shard, run_model.shard_parameters(shard), dht, signing_key,
                                                  peer_gate=gate, param_names=run_model.shard_names[shard])
                      for shard in shards}
        reinstall_stop_signals()  # hivemind set SIGINT to SIG_IGN in this process as its averagers started
        if start is not None:
            for shard in start.shards:
                optimizers[shard].start_at_epoch(start.epoch)
        client = CoordinatorClient(endpoint)
        membership.start()  # its loops open their own channels, after hivemind forked its processes
        membership.watch(optimizers.values())
        limits = config.limits
        if config.wait_for_peers > 1:
            # the wait counts against --max-seconds: a volunteer's time limit is wall time
            wait_started = time.monotonic()
            wait_s = min(config.wait_timeout_s, limits.max_seconds if limits.max_seconds is not None else math.inf)
            if not wait_for_peers(dht, spec, shards, config.wait_for_peers, wait_s, stop) and not stop.is_set():
                logger.warning("fewer than %d peers after %.0fs; training anyway", config.wait_for_peers, wait_s)
            if limits.max_seconds is not None:
                limits = replace(limits, max_seconds=max(0.0, limits.max_seconds - (time.monotonic() - wait_started)))

        # opened after hivemind forked its processes, like the gRPC channels
        outbox = Outbox(config.outbox or identity.path.parent / f"outbox-{identity.peer_id}.sqlite",
                        endpoint.address)
        sender = OutboxSender(outbox, lambda: CoordinatorClient(endpoint),
                              interval_s=assignment.report_interval_s or 5.0).start()
        sender.kick()  # receipts left from an earlier session go first

        def send(reports: list[ShardReport]) -> None:
            for report in reports:
                receipt = Receipt.new(run=spec.name, shard=report.shard, peer_id=identity.peer_id,
                                      epoch=report.epoch, steps=report.steps, samples=report.samples,
                                      tokens=report.tokens, compute_seconds=report.compute_seconds,
                                      loss=report.mean_loss, started_at=report.started_at, ended_at=report.ended_at,
                                      precision=fit.precision.name)
                outbox.put(sign_receipt(receipt, identity))
            sender.kick()

        loop = TrainingLoop(spec, run_model, optimizers, texts, device, on_report=send,
                            report_interval_s=assignment.report_interval_s or 5.0,
                            show_progress=config.show_progress, data_seed=zlib.crc32(identity.peer_id.encode()),
                            sync_peers=config.wait_for_peers, sync_timeout_s=config.wait_timeout_s,
                            gradient_step=GradientStep(fit.precision, device, config.micro_batch_size))
        summary = loop.run(limits, stop)
        for optimizer in optimizers.values():
            optimizer.settle()  # local mode: the last round lands and the model holds the swarm's parameters
        if config.save_lora_to:
            torch.save({name: param.detach().cpu().clone() for name, param in run_model.model.named_parameters()
                        if "lora_" in name}, config.save_lora_to)
        logger.info("stopped (%s) after %d steps, %d samples, epochs %s, samples per shard %s", summary.stopped_by,
                    summary.steps, summary.samples, summary.epochs, summary.samples_by_shard)
        final_epoch = min(optimizer.local_epoch for optimizer in optimizers.values())
        if config.hand_over_timeout_s > 0 and final_epoch > (start.epoch if start else 0):
            for optimizer in optimizers.values():
                optimizer.report_progress_now()
            time.sleep(PROGRESS_STORE_S)  # the records reach the DHT before the coordinator reads them
            hand_over_final_state(client, assignment.worker_id, identity, final_epoch, config.hand_over_timeout_s)
        if config.linger_s > 0 and not stop.is_set():
            logger.info("serving the averaged state for %.0fs more", config.linger_s)
            stop.wait(config.linger_s)
        return summary
    finally:
        stop.set()  # stopping now: a Ctrl-C from here on aborts (skips the receipts' delivery) at once
        if membership is not None:
            membership.stop()
        if sender is not None:
            sender.stop(config.drain_timeout_s)
        if outbox is not None:
            outbox.close()
        try:
            client.leave(assignment.worker_id, identity)
        except Exception as exc:
            logger.warning("could not tell the coordinator we left: %s", exc)
        for optimizer in optimizers.values():
            optimizer.shutdown()
        dht.shutdown()
        client.close()

