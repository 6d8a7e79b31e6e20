"""``swarm donate``: join a run and train its LoRA shards with the swarm."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from nomoat_cli.common import (DEFAULT_COORDINATOR, CaFile, CoordinatorAddress, Fingerprint, Insecure, LogFile,
                               Verbose, coordinator_endpoint, fail)
from nomoat_cli.credentials import JoinToken
from swarm.paths import UserDirs


def donate(
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
    ca: CaFile = None,
    fingerprint: Fingerprint = None,
    insecure: Insecure = False,
    run: str = typer.Option("", help="Run name (default: the run the coordinator's operator made the default)."),
    join_token: JoinToken = "",
    name: str = typer.Option("", help="Your display name."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    max_shards: int = typer.Option(0, help="Train at most this many shards (0: all)."),
    host: str = typer.Option("127.0.0.1", help="DHT listen address."),
    announce_host: Optional[str] = typer.Option(None, help="Address other peers dial when --host is 0.0.0.0."),
    client_mode: bool = typer.Option(False, help="Behind NAT: only dial out."),
    identity: Optional[Path] = typer.Option(None, help="libp2p key file (default ~/.config/nomoat/identity.key)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many local steps."),
    max_seconds: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
    max_epochs: Optional[int] = typer.Option(None, help="Stop once every shard reaches this epoch."),
    wait_for_peers: int = typer.Option(1, help="Wait until this many peers serve each shard before training."),
    progress: bool = typer.Option(True, help="Show the live progress line."),
    save_lora: Optional[Path] = typer.Option(None, help="Save the final LoRA tensors here (torch.save)."),
    linger: float = typer.Option(0.0, help="After training, keep serving the averaged state this many seconds."),
    outbox: Optional[Path] = typer.Option(None, help="Unsent-receipt file (default: beside the identity key)."),
    drain_timeout: float = typer.Option(30.0, help="On exit, keep trying this long to deliver queued receipts."),
    precision: str = typer.Option("auto", help="Base weights in auto, fp32, bf16, fp16, 8bit or 4bit (8bit and "
                                               "4bit: CUDA and bitsandbytes); auto: the best that fits."),
    micro_batch_size: int = typer.Option(0, help="Samples per forward pass (0: the run's batch_size_per_step); "
                                                 "halved by itself on CUDA out-of-memory."),
    gradient_checkpointing: str = typer.Option("auto", help="auto (on for CUDA), on or off."),
    hand_over_timeout: float = typer.Option(
        120.0, help="On stop, wait this long for the coordinator to snapshot the final state (0: do not hand it "
                    "over)."),
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Donate compute: join a run and train its LoRA shards with the swarm.

    \b
    Example:
      swarm donate -c coord.example.org --run myrun --name alice --max-seconds 3600
    """
    options = dict(locals())  # every option above, for _donate
    from swarm.stop_signals import install_stop_signals

    # first of all: a Ctrl-C during the imports and the start-up below stops cleanly too
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        _donate(stop, **options)
    except KeyboardInterrupt:  # a second Ctrl-C: leave now
        from swarm.reaper import kill_descendants

        # this process's threads that talk to them (multiprocessing's resource sharer, passing a state download's
        # file descriptors to an averager) fail as they die: nothing of that is news to someone leaving now
        threading.excepthook = lambda args: None
        kill_descendants()  # hivemind's processes, before they find this one gone (each would log a traceback)
        typer.echo("aborted", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # not sys.exit: it would wait for hivemind's threads


def _donate(stop: threading.Event, *, coordinator: str, ca: Path | None, fingerprint: str | None, insecure: bool,
            run: str, join_token: str, name: str, device: str, max_shards: int, host: str,
            announce_host: str | None, client_mode: bool, identity: Path | None, max_steps: int | None,
            max_seconds: float | None, max_epochs: int | None, wait_for_peers: int, progress: bool,
            save_lora: Path | None, linger: float, outbox: Path | None, drain_timeout: float,
            precision: str, micro_batch_size: int, gradient_checkpointing: str, hand_over_timeout: float,
            log_file: Path | None, verbose: bool) -> None:
    from swarm.process_lock import ProcessLocked, require_identity_free

    try:  # before joining and loading a model: a second donor under this key fails at once, in one line
        require_identity_free(identity or UserDirs.from_environment().identity_key)
    except ProcessLocked as exc:
        fail(str(exc))
    from swarm.client import CoordinatorError
    from swarm.log import quiet_libraries
    from swarm.reaper import start_reaper
    from worker.donate import DonateConfig, donate as run_donate
    from worker.training import TrainingLimits

    quiet_libraries(log_file, verbose)  # hivemind, imported just now, starts its processes only in run_donate
    if stop.is_set():
        typer.echo("stopped before joining the run")
        return
    start_reaper()  # hivemind's processes must not outlive this one, even if it is SIGKILLed
    endpoint = coordinator_endpoint(coordinator, ca, fingerprint, insecure)
    config = DonateConfig(
        coordinator=endpoint, run=run, name=name, device=device, max_shards=max_shards, host=host,
        announce_host=announce_host, client_mode=client_mode, identity=identity,
        user_dirs=UserDirs.from_environment(), wait_for_peers=wait_for_peers,
        limits=TrainingLimits(max_steps=max_steps, max_seconds=max_seconds, max_epochs=max_epochs),
        show_progress=progress, save_lora_to=save_lora, linger_s=linger, outbox=outbox,
        drain_timeout_s=drain_timeout, join_token=join_token, hand_over_timeout_s=hand_over_timeout,
        precision=precision, micro_batch_size=micro_batch_size, gradient_checkpointing=gradient_checkpointing,
    )
    try:
        summary = run_donate(config, stop)
    except (CoordinatorError, ValueError, RuntimeError) as exc:
        fail(str(exc))
    typer.echo(f"trained {summary.steps} steps ({summary.samples} samples), epochs {summary.epochs}, "
               f"last loss {summary.last_loss:.4f}, stopped by {summary.stopped_by}")
    typer.echo("samples per shard: " + " ".join(f"{shard}={samples}"
                                                for shard, samples in sorted(summary.samples_by_shard.items())))
