"""``swarm launch``: create a community training run on a coordinator."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nomoat_cli.common import DEFAULT_COORDINATOR, CoordinatorAddress, fail


def launch(
    coordinator: CoordinatorAddress = DEFAULT_COORDINATOR,
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
    from swarm.client import CoordinatorClient, CoordinatorError
    from swarm.spec import SpecError, build_spec, load_spec_file, merge_fields

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
        fail(str(exc))
    try:
        with CoordinatorClient(coordinator) as client:
            launched = client.launch_run(run_spec)
    except CoordinatorError as exc:
        fail(str(exc))
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
