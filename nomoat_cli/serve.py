"""``swarm coordinator``: run the coordinator service until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import typer

from nomoat_cli.common import COORDINATOR_PORT, LogFile, Verbose, fail

DB_URL_VARIABLE = "NOMOAT_DB_URL"


def coordinator(
    data_dir: Path = typer.Option(Path("~/.nomoat/coordinator"), help="Folder of the SQLite DB and adapter store."),
    db: Optional[str] = typer.Option(None, help="SQLAlchemy URL (default: SQLite file in --data-dir). Anyone on "
                                     "the machine can read a command line: pass a URL with a password in "
                                     f"${DB_URL_VARIABLE} or --db-url-file instead."),
    db_url_file: Optional[Path] = typer.Option(None, help="File holding the SQLAlchemy URL (mode 0600)."),
    host: str = typer.Option("127.0.0.1", help="Listen address (0.0.0.0 to serve other machines)."),
    port: int = typer.Option(COORDINATOR_PORT, help="gRPC port (what clients dial when -c names no port)."),
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
    allow_hub_datasets: bool = typer.Option(False, "--allow-hub-datasets", help="Let runs name Hugging Face Hub "
                                            "datasets (hub:ORG/NAME[:SPLIT][@REVISION]); this coordinator downloads "
                                            "them at launch. Without it, only 'sample' and --dataset-dir files."),
    tls_cert: Optional[Path] = typer.Option(None, help="Your TLS certificate (PEM, with its chain). Without one, a "
                                            "coordinator off loopback makes a self-signed certificate on first "
                                            "start (kept in --data-dir/tls) and prints its fingerprint."),
    tls_key: Optional[Path] = typer.Option(None, help="The private key of --tls-cert (PEM)."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve plaintext gRPC even off loopback: anyone on the "
                                  "network path can read and change requests. Only on a network you trust."),
    access_token_lifetime: float = typer.Option(600.0, min=10.0, max=86400.0, help="Seconds a worker's swarm "
                                                "access token lasts (workers renew it after a third of it)."),
    limit: list[str] = typer.Option([], help="Change one of the coordinator's limits, NAME=VALUE (repeatable), "
                                    "e.g. rate_per_s=20; the limits are listed in docs/SECURITY.md."),
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Start the coordinator: gRPC API, database, adapter store and the swarm's bootstrap DHT peer.

    \b
    Example:
      swarm coordinator --host 0.0.0.0 --announce-host coord.example.org --dht-port 31337
    """
    from coordinator.limits import LimitsError, RpcLimits
    from coordinator.publisher import PublishPolicy
    from coordinator.server import Coordinator, CoordinatorConfig
    from swarm.log import quiet_libraries
    from swarm.reaper import start_reaper
    from swarm.stop_signals import install_stop_signals

    db_url = database_url(db, db_url_file)
    for what, number in (("--port", port), ("--dht-port", dht_port)):
        if number and not port_is_free(host, number):  # before anything is written into the data dir
            fail(f"{what} {number} on {host} is in use (another coordinator?): stop what listens there or pass "
                 f"another {what}")
    created_data_dir = not data_dir.expanduser().exists()
    quiet_libraries(log_file, verbose)  # hivemind, imported just now, starts its DHT only in Coordinator.start
    try:
        limits = RpcLimits.with_overrides(limit)
    except LimitsError as exc:
        fail(f"--limit: {exc}")
    start_reaper()  # hivemind's processes must not outlive this one, even if it is SIGKILLed
    policy = PublishPolicy(keep_versions=keep_versions, max_eval_regression=max_eval_regression,
                           compare_peers=compare_peers)
    try:
        config = CoordinatorConfig(data_dir=data_dir, db_url=db_url, host=host, port=port, dht_port=dht_port,
                                   announce_host=announce_host, publish=not no_publish, publish_policy=policy,
                                   dataset_dirs=tuple(dataset_dir),
                                   allow_hub_datasets=allow_hub_datasets, tls_cert=tls_cert, tls_key=tls_key,
                                   insecure=insecure, limits=limits,
                                   access_token_lifetime_s=access_token_lifetime)
        service = Coordinator(config).start()
    except Exception as exc:
        if created_data_dir:  # made a moment ago by this failed start: nothing in it is the user's
            shutil.rmtree(data_dir.expanduser(), ignore_errors=True)
        fail(f"coordinator did not start: {exc}")
    typer.echo(f"coordinator: {service.address}")
    if service.tls_fingerprint:
        typer.echo(f"TLS certificate fingerprint: {service.tls_fingerprint}")
        pin = f"swarm donate -c {service.address} --fingerprint {service.tls_fingerprint}"
        typer.echo(f"  volunteers pin it: {pin} (or set NOMOAT_FINGERPRINT)" if service.tls_self_signed else
                   f"  clients verify it with their system's CA roots or --ca FILE, or pin it: {pin}")
    else:
        typer.echo("TLS: off (plaintext gRPC)")
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


def database_url(db: str | None, db_url_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The coordinator's database URL: ``--db``, else the one in ``--db-url-file``, else ``$NOMOAT_DB_URL``, else
    None (SQLite in the data dir). A password given with ``--db`` is accepted, with a warning."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from swarm.private_files import InsecureFileError, require_private

    if db and db_url_file:
        fail("choose one of --db and --db-url-file")
    if db_url_file:
        path = db_url_file.expanduser()
        try:
            require_private(path)
            url = path.read_text().strip()
        except (OSError, InsecureFileError) as exc:
            fail(f"cannot use --db-url-file: {exc}")
        if not url:
            fail(f"--db-url-file {path} is empty")
        return url
    if db:
        try:
            password = make_url(db).password
        except ArgumentError:
            password = None  # the database layer names what is wrong with it
        if password:
            typer.echo(f"warning: --db holds a password, which other users of this machine can read in the process "
                       f"list; pass the URL in ${DB_URL_VARIABLE} or --db-url-file FILE (mode 0600) instead",
                       err=True)
        return db
    return environ.get(DB_URL_VARIABLE) or None


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as gRPC and hivemind bind: reusing addresses in
    TIME_WAIT, not sharing a port another process listens on). An address that does not resolve counts as free:
    the start reports it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return True
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError:
                return False
    return True
