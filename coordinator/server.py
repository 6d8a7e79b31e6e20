"""The coordinator process: database, adapter store, bootstrap DHT peer, publisher thread, gRPC server.

Usage::

    with Coordinator(CoordinatorConfig(data_dir=Path("/tmp/nomoat"))) as coordinator:
        print(coordinator.address, coordinator.initial_peers)
        coordinator.wait()
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import hivemind

from coordinator.access import OPERATOR_TOKEN_FILE, AccessInterceptor, AccessPolicy, load_or_create_operator_token
from coordinator.adapter_store import AdapterStore
from swarm.process_lock import data_dir_lock
from coordinator.dataset_sources import DatasetSources
from coordinator.dataset_vault import DatasetVault
from coordinator.ledger import Ledger
from coordinator.limits import RpcLimits
from coordinator.progress_watch import ProgressWatcher
from coordinator.publisher import Publisher, PublishPolicy
from coordinator.retention import Retention
from coordinator.rpc_errors import RpcErrorInterceptor
from coordinator.rpc_limits import RpcLimitsInterceptor, server_options, thread_pool
from coordinator.run_admin import RunAdministration
from coordinator.runtime import RunRuntimes
from coordinator.service import CoordinatorService
from coordinator.servicer import CoordinatorServicer
from coordinator.storage import Storage
from coordinator.swarm_access import SwarmAccess
from coordinator.transport import server_tls
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.background import BackgroundLoop
from swarm.client import Endpoint
from swarm.credentials import read_operator_token
from swarm.dht import connected_peer_addresses, start_dht, visible_addresses
from swarm.identity import load_or_create_identity
from swarm.log import get_logger
from swarm.peer_access import DEFAULT_LIFETIME_S, SwarmAuthorizer
from swarm.peer_gate import access_validators
from swarm.private_files import write_private_file

logger = get_logger(__name__)


@dataclass
class CoordinatorConfig:
    """Where and how the coordinator runs."""

    data_dir: Path = field(default_factory=lambda: Path("~/.nomoat/coordinator"))  # DB (default) and store
    db_url: str | None = None  # any SQLAlchemy URL; None: SQLite file in data_dir
    host: str = "127.0.0.1"  # gRPC and DHT listen address (0.0.0.0 to serve other machines)
    port: int = 50051  # gRPC port (0: any free port)
    dht_port: int = 0  # DHT port (0: any free port)
    announce_host: str | None = None  # address other machines dial when host is 0.0.0.0
    publisher_poll_s: float = 1.0  # how often the publisher checks whether a run is due
    publish: bool = True  # run the periodic publisher (PublishNow works either way)
    watch_interval_s: float = 2.0  # how often DHT progress is read to cross-check receipts
    publish_policy: PublishPolicy = field(default_factory=PublishPolicy)  # cross-check, quality gate, retention
    dataset_dirs: tuple[Path, ...] = ()  # folders launched runs may take datasets from (besides 'sample')
    allow_hub_datasets: bool = False  # runs may name Hugging Face Hub datasets ('hub:ORG/NAME'), downloaded at launch
    tls_cert: Path | None = None  # the operator's certificate (PEM, with its chain); None: see coordinator.transport
    tls_key: Path | None = None  # its private key (PEM); given together with tls_cert
    insecure: bool = False  # plaintext gRPC even off loopback (logged as a warning); never with tls_cert
    tls_on_loopback: bool = False  # TLS on a loopback host too (self-signed without tls_cert): local checks, tests

    limits: RpcLimits = field(default_factory=RpcLimits)  # message sizes, concurrency, streams, rates, bounds
    access_token_lifetime_s: float = DEFAULT_LIFETIME_S  # workers' swarm access tokens; renewed at a third of it

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give the TLS certificate and its key together (--tls-cert and --tls-key)")
        if self.insecure and (self.tls_cert is not None or self.tls_on_loopback):
            raise ValueError("--insecure serves plaintext: it cannot be combined with a TLS certificate")
        if not 10.0 <= self.access_token_lifetime_s <= 86400.0:
            raise ValueError("the access token lifetime must be 10 s .. 1 day")


class Coordinator:
    def __init__(self, config: CoordinatorConfig):
        self.config = config
        data_dir = Path(config.data_dir).expanduser()
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock = data_dir_lock(data_dir).acquire()  # ProcessLocked when another coordinator serves this data dir
        try:
            self._build(config, data_dir)
        except BaseException:  # nothing half-started may outlive a failed start: no DHT process, no lock
            if getattr(self, "dht", None) is not None:
                self.dht.shutdown()
            if getattr(self, "storage", None) is not None:
                self.storage.close()
            self.lock.release()
            raise

    def _build(self, config: CoordinatorConfig, data_dir: Path) -> None:
        # first, so that an unreadable certificate fails the start before anything else is started
        tls = server_tls(data_dir, config.host, config.announce_host, tls_cert=config.tls_cert,
                         tls_key=config.tls_key, insecure=config.insecure, tls_on_loopback=config.tls_on_loopback)
        self.tls_fingerprint = tls.fingerprint if tls else None  # sha256:... that clients pin; None: plaintext
        self.tls_self_signed = bool(tls and tls.self_signed)
        self.storage = Storage(config.db_url or f"sqlite:///{data_dir / 'coordinator.db'}")
        self.store = AdapterStore(data_dir / "store")
        sources = DatasetSources(config.dataset_dirs, allow_hub=config.allow_hub_datasets)
        self.runs = RunRuntimes(self.storage, DatasetVault(data_dir / "datasets"), sources)
        self.peer_book = data_dir / "dht_peers.json"
        # one key is the coordinator's libp2p peer ID and signs the manifests of the versions it publishes
        self.identity = load_or_create_identity(data_dir / "dht_identity.key")
        self.dht = self._start_dht()
        # hivemind keeps the first RSASignatureValidator: the coordinator's key, as its other records use
        self.dht.add_validators(access_validators(self.identity.as_hivemind_key()))
        self.swarm_access = SwarmAccess(self.storage, self.runs, self.identity, config.access_token_lifetime_s,
                                        dht=self.dht)
        self.swarm_access.push_revoked()  # bans stored before this start
        self.initial_peers = visible_addresses(self.dht)
        self.retention = Retention(self.storage, self.store, config.publish_policy.keep_versions)
        self.publisher = Publisher(self.storage, self.runs, self.store, self.dht, self.identity,
                                   config.publish_policy, retention=self.retention)
        self.watcher = ProgressWatcher(self.dht, self.storage, self.runs, self.identity.as_hivemind_key())
        self.ledger = Ledger(self.storage, self.runs, refresh_shard=self.watcher.poll_shard)
        self.watcher.ledger_recheck = self.ledger.recheck_unverified
        # the operator credential: who may launch, publish, release and administer runs
        self.operator_token_file = data_dir / OPERATOR_TOKEN_FILE
        self.access = AccessPolicy(self.storage, load_or_create_operator_token(self.operator_token_file),
                                   coordinator_id=self.identity.peer_id)
        self.admin = RunAdministration(self.storage, self.runs)
        self.service = CoordinatorService(self.storage, self.runs, self.publisher, self.ledger,
                                          self.initial_peers, retention=self.retention, limits=config.limits,
                                          access=self.access, swarm=self.swarm_access, publishes=config.publish)
        # without SO_REUSEPORT a second server on a port in use fails to bind instead of sharing it silently
        limits = config.limits
        self.server = grpc.server(thread_pool(limits), options=[*server_options(limits), ("grpc.so_reuseport", 0)],
                                  maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
                                  interceptors=[RpcLimitsInterceptor(limits), RpcErrorInterceptor(),
                                                AccessInterceptor(self.access)])
        pb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(self.service, self.admin), self.server)
        listen = f"{config.host}:{config.port}"
        try:
            bound = (self.server.add_secure_port(listen, tls.credentials()) if tls
                     else self.server.add_insecure_port(listen))
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise RuntimeError(f"cannot listen on {config.host}:{config.port} (port in use?)")
        public_host = config.announce_host or config.host
        self.address = f"{public_host}:{bound}"
        self.lock.describe_holder(self.address)
        self._stopped = threading.Event()
        # every 5 s remember the connected DHT peers, for the next start, and republish revocation lists when due
        self._saved_peers: list[str] = []
        self._housekeeping = BackgroundLoop("housekeeping", 5.0, self._housekeep)

    def operator_endpoint(self) -> Endpoint:
        """This coordinator's address with the operator token, pinning its certificate when it serves TLS (for tools
        that run beside it, and tests)."""
        return Endpoint(self.address, fingerprint=self.tls_fingerprint,
                        operator_token=read_operator_token(self.operator_token_file))

    def _start_dht(self) -> hivemind.DHT:
        """The bootstrap DHT peer. It keeps its identity, and after a restart it dials the peers it was last
        connected to: workers forget a peer that stopped answering, so a restarted coordinator must find them."""
        config = self.config
        identity = str(self.identity.path)
        # only peers with an access token this coordinator signed (and not banned) use its DHT; it signs its own
        authorizer = SwarmAuthorizer(self.identity.as_hivemind_key(), self.identity.public_key_der,
                                     issuer=self.identity, lifetime_s=config.access_token_lifetime_s)
        known = []
        if self.peer_book.is_file():
            try:
                known = list(json.loads(self.peer_book.read_text()))
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable peer book %s: %s", self.peer_book, exc)
        if known:
            try:
                dht = start_dht(known, host=config.host, port=config.dht_port, announce_host=config.announce_host,
                                identity_path=identity, authorizer=authorizer)
                logger.info("rejoined the swarm through %d known peer address(es)", len(known))
                return dht
            except Exception as exc:  # none of them is up any more: start a new swarm
                logger.info("no known peer answered (%s); starting without them", str(exc).splitlines()[-1])
        return start_dht(host=config.host, port=config.dht_port, announce_host=config.announce_host,
                         identity_path=identity, authorizer=authorizer)

    def _housekeep(self) -> None:
        self._save_peer_book()
        self.swarm_access.republish_if_due()

    def _save_peer_book(self) -> None:
        peers = connected_peer_addresses(self.dht)
        if peers and peers != self._saved_peers:  # rewritten (and fsynced) only when the peers change
            write_private_file(self.peer_book, json.dumps(peers).encode())
            self._saved_peers = peers

    def start(self) -> "Coordinator":
        self.admin.forget_removed_runs()
        self.runs.load_all()  # every run warm before the first request; a broken one is only marked unavailable
        self.server.start()
        if self.config.publish:
            self.publisher.start(self.config.publisher_poll_s)
        self._housekeeping.start()
        self.watcher.start(self.config.watch_interval_s)
        logger.info("coordinator listening on %s (%s); workers' initial peers: %s", self.address,
                    f"TLS, certificate {self.tls_fingerprint}" if self.tls_fingerprint else "plaintext",
                    self.initial_peers)
        return self

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._housekeeping.stop(timeout=10)
        self.server.stop(grace=2).wait()
        self.publisher.stop()
        self.watcher.stop()
        self.dht.shutdown()
        self.storage.close()
        self.lock.release()

    def __enter__(self) -> "Coordinator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
