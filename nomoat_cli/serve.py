"""``swarm coordinator``: run the coordinator service until Ctrl-C or SIGTERM."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from nomoat_cli.common import fail


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
    dataset_dir: list[Path] = typer.Option([], help="A folder runs may take their dataset from (repeatable); "
                                           "without one, only the built-in 'sample' dataset can be launched."),
) -> None:
    """Start the coordinator: gRPC API, database, adapter store and the swarm's bootstrap DHT peer."""
    from coordinator.publisher import PublishPolicy
    from coordinator.server import Coordinator, CoordinatorConfig
    from swarm.reaper import start_reaper
    from swarm.stop_signals import install_stop_signals

    reaper = start_reaper()  # hivemind's processes must not outlive this one, even if it is SIGKILLed
    policy = PublishPolicy(keep_versions=keep_versions, max_eval_regression=max_eval_regression,
                           compare_peers=compare_peers)
    config = CoordinatorConfig(data_dir=data_dir, db_url=db, host=host, port=port, dht_port=dht_port,
                               announce_host=announce_host, publish=not no_publish, publish_policy=policy,
                               dataset_dirs=tuple(dataset_dir))
    try:
        service = Coordinator(config).start()
    except Exception as exc:
        fail(f"coordinator did not start: {exc}")
    typer.echo(f"coordinator: {service.address}")
    typer.echo(f"coordinator key (signs published versions): {service.identity.peer_id}")
    typer.echo(f"operator token file (launch, publish, release, tokens, run administration): "
               f"{service.operator_token_file}")
    typer.echo(f"initial peers: {' '.join(service.initial_peers)}")
    sys.stdout.flush()
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        service.stop()
        reaper.release()
