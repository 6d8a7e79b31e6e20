"""The ``swarm`` command line: one small typed function per command, assembled in one Typer app."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from swarm.client import CoordinatorClient, CoordinatorError
from swarm.paths import UserDirs
from swarm.spec import SpecError, build_spec, load_spec_file, merge_fields

app = typer.Typer(help="nomoat: a community fine-tuning swarm of LoRA adapters over hivemind.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def coordinator(
    data_dir: Path = typer.Option(Path("~/.nomoat/coordinator"), help="Folder of the SQLite DB and adapter store."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL (default: SQLite file in --data-dir)."),
    host: str = typer.Option("127.0.0.1", help="Listen address (0.0.0.0 to serve other machines)."),
    port: int = typer.Option(50051, help="gRPC port."),
    dht_port: int = typer.Option(0, help="DHT port (0: any free port)."),
    announce_host: Optional[str] = typer.Option(None, help="Address other machines dial when --host is 0.0.0.0."),
    no_publish: bool = typer.Option(False, help="Do not publish on the runs' intervals (PublishNow still works)."),
    keep_versions: int = typer.Option(10, min=1, help="Retention: newest versions per run that keep their files "
                                      "(releases and versions other runs stack on are always kept)."),
    max_eval_regression: float = typer.Option(0.05, min=0.0, help="Quality gate: refuse a version whose eval "
                                              "loss is worse than the previous one's by more than this fraction."),
    compare_peers: int = typer.Option(3, min=1, help="Download each shard's state from up to this many peers "
                                      "and publish only what the majority agrees on."),
) -> None:
    """Start the coordinator: gRPC API, database, adapter store and the swarm's bootstrap DHT peer."""
    from coordinator.publisher import PublishPolicy
    from coordinator.server import Coordinator, CoordinatorConfig

    policy = PublishPolicy(keep_versions=keep_versions, max_eval_regression=max_eval_regression,
                           compare_peers=compare_peers)
    config = CoordinatorConfig(data_dir=data_dir, db_url=db, host=host, port=port, dht_port=dht_port,
                               announce_host=announce_host, publish=not no_publish, publish_policy=policy)
    try:
        service = Coordinator(config).start()
    except Exception as exc:
        _fail(f"coordinator did not start: {exc}")
    typer.echo(f"coordinator: {service.address}", err=False)
    typer.echo(f"coordinator key (signs published versions): {service.identity.peer_id}")
    typer.echo(f"initial peers: {' '.join(service.initial_peers)}")
    sys.stdout.flush()
    stop = threading.Event()
    from worker.donate import install_stop_signals  # same clean-stop handling as workers

    install_stop_signals(stop)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        service.stop()


@app.command()
def launch(
    coordinator: str = typer.Option("127.0.0.1:50051", "--coordinator", "-c", help="Coordinator host:port."),
    spec: Optional[Path] = typer.Option(None, help="RunSpec file (.toml, .yaml, .json); flags override it."),
    name: Optional[str] = typer.Option(None, help="Run name."),
    base_model: Optional[str] = typer.Option(None, help="'tiny', a Hugging Face id or a local model folder."),
    dataset: Optional[str] = typer.Option(None, help="'sample', or a local .jsonl / .txt file."),
    rank: Optional[int] = typer.Option(None, help="LoRA rank."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha."),
    dropout: Optional[float] = typer.Option(None, help="LoRA dropout."),
    target_modules: Optional[str] = typer.Option(None, help="Comma-separated module names, e.g. q_proj,v_proj."),
    shards: Optional[int] = typer.Option(None, help="Number of adapter shards."),
    batch_size: Optional[int] = typer.Option(None, help="Samples per local step."),
    target_batch_size: Optional[int] = typer.Option(None, help="Samples the swarm accumulates per epoch."),
    optimizer: Optional[str] = typer.Option(None, help="adamw, adam or sgd."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per sample."),
    data_slices: Optional[int] = typer.Option(None, help="Slices the train split is cut into."),
    publish_interval: Optional[float] = typer.Option(None, help="Seconds between published versions."),
    seed: Optional[int] = typer.Option(None, help="Seed of LoRA init and data split."),
    matchmaking_time: Optional[float] = typer.Option(None, help="hivemind matchmaking time (s)."),
    averaging_timeout: Optional[float] = typer.Option(None, help="hivemind averaging timeout (s)."),
    progress_refresh: Optional[float] = typer.Option(None, help="How often peers re-read swarm progress (s)."),
    parent: Optional[str] = typer.Option(None, help="Stack on a published version, RUN@VERSION: train a new LoRA "
                                         "on the base model with that version merged in."),
) -> None:
    """Launch a community training run."""
    flags = {
        "name": name, "base_model": base_model, "dataset": dataset, "shards": shards,
        "batch_size_per_step": batch_size, "target_batch_size": target_batch_size, "optimizer": optimizer,
        "lr": lr, "seq_len": seq_len, "data_slices": data_slices, "publish_interval_s": publish_interval,
        "seed": seed, "parent": parent,
        "lora": {"rank": rank, "alpha": alpha, "dropout": dropout,
                 "target_modules": target_modules.split(",") if target_modules else None},
        "averaging": {"matchmaking_time": matchmaking_time, "averaging_timeout": averaging_timeout,
                      "progress_refresh_s": progress_refresh},
    }
    try:
        run_spec = load_spec_file(spec, flags) if spec else build_spec(merge_fields({}, _drop_empty(flags)))
    except SpecError as exc:
        _fail(str(exc))
    try:
        with CoordinatorClient(coordinator) as client:
            launched = client.launch_run(run_spec)
    except CoordinatorError as exc:
        _fail(str(exc))
    typer.echo(f"launched run '{launched.run_name}' ({launched.spec_hash})")
    typer.echo(f"  base model fingerprint {launched.base_model_fingerprint}")
    typer.echo(f"  dataset {launched.dataset_digest}: {launched.train_samples} train / {launched.eval_samples} eval")


def _drop_empty(fields: dict) -> dict:
    cleaned = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            value = _drop_empty(value)
            if not value:
                continue
        if value is not None:
            cleaned[key] = value
    return cleaned


@app.command()
def donate(
    coordinator: str = typer.Option("127.0.0.1:50051", "--coordinator", "-c", help="Coordinator host:port."),
    run: str = typer.Option("", help="Run name (default: the coordinator's newest run)."),
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
) -> None:
    """Donate compute: join a run and train its LoRA shards with the swarm."""
    from worker.donate import DonateConfig, donate as run_donate, install_stop_signals
    from worker.training import TrainingLimits

    stop = threading.Event()
    install_stop_signals(stop)
    config = DonateConfig(
        coordinator=coordinator, run=run, name=name, device=device, max_shards=max_shards, host=host,
        announce_host=announce_host, client_mode=client_mode, identity=identity,
        user_dirs=UserDirs.from_environment(), wait_for_peers=wait_for_peers,
        limits=TrainingLimits(max_steps=max_steps, max_seconds=max_seconds, max_epochs=max_epochs),
        show_progress=progress, save_lora_to=save_lora, linger_s=linger, outbox=outbox,
        drain_timeout_s=drain_timeout,
    )
    try:
        summary = run_donate(config, stop)
    except CoordinatorError as exc:
        _fail(str(exc))
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(f"trained {summary.steps} steps ({summary.samples} samples), epochs {summary.epochs}, "
               f"last loss {summary.last_loss:.4f}, stopped by {summary.stopped_by}")
    typer.echo("samples per shard: " + " ".join(f"{shard}={samples}"
                                                for shard, samples in sorted(summary.samples_by_shard.items())))


@app.command()
def pull(
    run: str = typer.Option(..., help="Run name."),
    out: Path = typer.Option(..., help="Output folder."),
    coordinator: str = typer.Option("127.0.0.1:50051", "--coordinator", "-c", help="Coordinator host:port."),
    version: str = typer.Option("latest", help="'latest' or a version number."),
    merge: bool = typer.Option(False, "--merge", help="Write the base model with the adapter (and its parent "
                               "chain) merged in, plus the tokenizer: no PEFT needed to load it."),
    chain: bool = typer.Option(False, "--chain", help="Write every adapter of a stacked version, root first, "
                               "and stack.json listing the order."),
    trust: Optional[str] = typer.Option(None, help="Peer ID of the coordinator key to trust (default: the key "
                                        "this address used on your first pull)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Download cache (default: ~/.cache/nomoat/adapters)."),
) -> None:
    """Download a published version, verify its signed manifest and hashes, and write it (resumes and caches)."""
    from swarm.pull import PullError, pull as run_pull

    if merge and chain:
        _fail("choose one of --merge and --chain")
    layout = "merged" if merge else "chain" if chain else "adapter"
    try:
        pulled = run_pull(coordinator, run, out, version=version, layout=layout, trusted_signer=trust,
                          cache_dir=cache_dir, show_progress=True, user_dirs=UserDirs.from_environment())
    except (CoordinatorError, PullError) as exc:
        _fail(str(exc))
    fetched = f"{pulled.downloaded_bytes} bytes downloaded" if pulled.downloaded_bytes else "nothing to download"
    stacked = f", stacked on {' -> '.join(map(str, pulled.manifest.chain))}" if pulled.manifest.chain else ""
    typer.echo(f"pulled {pulled.run_name} version {pulled.version} (sha256 {pulled.sha256[:16]}..., "
               f"eval loss {pulled.eval_loss:.4f} vs base {pulled.base_eval_loss:.4f}{stacked}) into {pulled.path} "
               f"as {layout}; signed by {pulled.manifest.coordinator}; {fetched}")


@app.command()
def release(
    run: str = typer.Option(..., help="Run name."),
    version: int = typer.Option(..., help="Version number."),
    coordinator: str = typer.Option("127.0.0.1:50051", "--coordinator", "-c", help="Coordinator host:port."),
    undo: bool = typer.Option(False, "--undo", help="Unmark it (retention may then remove it)."),
) -> None:
    """Mark a version as a release: retention keeps it forever."""
    try:
        with CoordinatorClient(coordinator) as client:
            info = client.mark_release(run, version, release=not undo)
    except CoordinatorError as exc:
        _fail(str(exc))
    typer.echo(f"{run} version {info.version} is {'a release' if info.release else 'no longer a release'}")


@app.command()
def export(
    run: str = typer.Option(..., help="Run name."),
    out: Path = typer.Option(..., help="Folder to write the Hugging Face model repo into."),
    coordinator: str = typer.Option("127.0.0.1:50051", "--coordinator", "-c", help="Coordinator host:port."),
    version: str = typer.Option("latest", help="'latest' or a version number."),
    merge: bool = typer.Option(False, "--merge", help="Export the merged model instead of the adapter."),
    trust: Optional[str] = typer.Option(None, help="Peer ID of the coordinator key to trust."),
    upload: Optional[str] = typer.Option(None, help="Also upload to this Hub repo id (needs huggingface_hub and "
                                         "a token; optional)."),
) -> None:
    """Write a version as a Hugging Face model repo (model card with run, contributors, metrics), ready to upload."""
    from swarm.export import ExportError, export_hf_repo, upload_to_hub
    from swarm.pull import PullError, fetch_stack

    try:
        manifest, stack = fetch_stack(coordinator, run, version, trusted_signer=trust,
                                      user_dirs=UserDirs.from_environment())
        folder = export_hf_repo(stack[-1], out, trusted_signer=manifest.coordinator,
                                merged_from=stack[:-1] if merge else None)
        if upload:
            typer.echo(f"uploaded to {upload_to_hub(folder, upload)}")
    except (CoordinatorError, PullError, ExportError) as exc:
        _fail(str(exc))
    typer.echo(f"exported {run} version {manifest.version} to {folder}")


@app.command()
def status(
    coordinator: str = typer.Option("127.0.0.1:50051", "--coordinator", "-c", help="Coordinator host:port."),
    run: str = typer.Option("", help="Only this run."),
) -> None:
    """List runs, live workers per shard, samples trained and published versions."""
    try:
        with CoordinatorClient(coordinator) as client:
            response = client.status(run)
    except CoordinatorError as exc:
        _fail(str(exc))
    if not response.runs:
        typer.echo("no runs")
    for state in response.runs:
        typer.echo(f"run {state.run_name}: base {state.base_model}, dataset {state.dataset}, {state.shards} shard(s), "
                   f"{state.live_workers} live worker(s), {state.samples_trained} samples trained")
        if state.unavailable:
            typer.echo(f"  UNAVAILABLE: {state.unavailable}")
        for shard in state.shard_status:
            typer.echo(f"  shard {shard.shard}: {shard.live_workers} worker(s), epoch {shard.epoch}, "
                       f"{shard.samples} samples")
        if state.parent:
            typer.echo(f"  stacked on {state.parent}")
        for version in state.versions:
            marks = " [release]" if version.release else " [removed by retention]" if version.collected else ""
            typer.echo(f"  version {version.version}: epoch {version.epoch}, eval loss {version.eval_loss:.4f} "
                       f"(base {version.base_eval_loss:.4f}), {len(version.contributors)} contributor(s), "
                       f"sha256 {version.sha256[:16]}...{marks}")
        for rejected in state.rejected_snapshots:
            at_epoch = f" at epoch {rejected.epoch}" if rejected.epoch >= 0 else ""
            typer.echo(f"  rejected snapshot{at_epoch} ({rejected.attempted_at[:19]}): {rejected.reason}")


@app.command()
def leaderboard(
    run: str = typer.Option(..., help="Run name."),
    coordinator: str = typer.Option("127.0.0.1:50051", "--coordinator", "-c", help="Coordinator host:port."),
    all_receipts: bool = typer.Option(False, "--all", help="Count unverified receipts too (never disputed ones)."),
) -> None:
    """Contributors of a run: verified samples, compute hours, share of the run, last seen."""
    try:
        with CoordinatorClient(coordinator) as client:
            board = client.leaderboard(run, include_unverified=all_receipts)
    except CoordinatorError as exc:
        _fail(str(exc))
    counted = "verified + unverified" if all_receipts else "verified"
    typer.echo(f"run {run}: {board.total_samples} {counted} samples")
    if not board.entries:
        typer.echo("no contributions yet" if all_receipts else "no verified contributions yet (try --all)")
        return
    typer.echo(f"{'#':>3}  {'contributor':<20} {'peer id':<16} {'samples':>10} {'verified':>10} {'compute h':>9} "
               f"{'share':>6}  last seen")
    for rank, entry in enumerate(board.entries, start=1):
        disputed = f"  ({entry.disputed_receipts} disputed)" if entry.disputed_receipts else ""
        typer.echo(f"{rank:>3}  {entry.display_name[:20]:<20} {entry.peer_id[:14] + '..':<16} {entry.samples:>10} "
                   f"{entry.verified_samples:>10} {entry.compute_hours:>9.4f} {entry.share:>6.1%}  "
                   f"{entry.last_seen[:19]}{disputed}")


@app.command()
def demo(
    workers: int = typer.Option(2, help="Worker processes (2-3 fit two cores)."),
    seconds: float = typer.Option(60.0, help="Training time of each worker."),
    shards: int = typer.Option(2, help="Adapter shards of the demo run."),
    workdir: Optional[Path] = typer.Option(None, help="Where the demo keeps its files (default: a temp folder)."),
) -> None:
    """Run the whole swarm on this machine: coordinator, a run on the tiny preset, workers, versions, a pull."""
    from swarm.demo import DemoConfig, run_demo

    try:
        result = run_demo(DemoConfig(workers=workers, seconds=seconds, shards=shards, workdir=workdir))
    except RuntimeError as exc:
        _fail(str(exc))
    if not result.improved:
        _fail("the pulled adapter did not lower the eval loss")


if __name__ == "__main__":
    app()
