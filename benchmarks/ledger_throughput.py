"""How many signed receipts per second the coordinator accepts, and at what latency, with many concurrent workers.

A real coordinator gRPC server (ledger rules, signature checks, database) runs in this process; simulated
workers run in client processes, each worker a thread with its own identity that submits one signed receipt per
call, as ``swarm donate`` does. Receipts are signed before the clock starts. Prints one table row per database
and checks that the stored totals are exact.

    .venv/bin/python benchmarks/ledger_throughput.py                      # PostgreSQL at 127.0.0.1:5432/test
    .venv/bin/python benchmarks/ledger_throughput.py --db sqlite --workers 16
    .venv/bin/python benchmarks/ledger_throughput.py --db sqlite --tls     # over TLS, clients pinning the certificate
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
from sqlalchemy import create_engine, text

from coordinator.dataset_vault import DatasetVault
from coordinator.ledger import Ledger
from coordinator.rpc_errors import RpcErrorInterceptor
from coordinator.runtime import RunRuntimes
from coordinator.service import CoordinatorService
from coordinator.servicer import CoordinatorServicer
from coordinator.storage import Storage
from coordinator.transport import server_tls
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.client import CoordinatorClient, Endpoint
from swarm.identity import load_or_create_identity
from swarm.local_swarm import free_port
from swarm.receipts import Receipt, sign_receipt
from swarm.spec import RunSpec

RUN = "bench"
BATCH = 8
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _signed_receipts(key_path: str, count: int, started: float):
    identity = load_or_create_identity(Path(key_path))
    return [sign_receipt(Receipt.new(run=RUN, shard=0, peer_id=identity.peer_id, epoch=0, steps=4, samples=4 * BATCH,
                                     tokens=4 * BATCH * 64, compute_seconds=0.5, loss=4.0,
                                     started_at=started + index, ended_at=started + index + 1), identity)
            for index in range(count)]


def _client_process(endpoint: Endpoint, key_paths: list[str], count: int, started: float, ready, go, results) -> None:
    workloads = [_signed_receipts(path, count, started) for path in key_paths]
    ready.put(True)
    go.wait()

    def worker(receipts) -> list[float]:
        latencies = []
        with CoordinatorClient(endpoint) as client:
            for signed in receipts:
                begin = time.perf_counter()
                [result] = client.submit_receipts([signed])
                latencies.append(time.perf_counter() - begin)
                assert result.status == "accepted", result.message
        return latencies

    with futures.ThreadPoolExecutor(len(workloads)) as pool:
        results.put([latency for latencies in pool.map(worker, workloads) for latency in latencies])


def _database(kind: str) -> tuple[str, callable]:
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="nomoat-bench-")
        return f"sqlite:///{folder}/coordinator.db", lambda: None
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{POSTGRES}?options=-csearch_path%3D{schema}", drop


def run(kind: str, workers: int, per_worker: int, processes: int, server_threads: int, tls: bool = False) -> dict:
    url, drop = _database(kind)
    storage = Storage(url)
    runs = RunRuntimes(storage, DatasetVault(Path(tempfile.mkdtemp(prefix="nomoat-bench-datasets-"))))
    runs.launch(RunSpec(name=RUN, base_model="tiny", dataset="sample", batch_size_per_step=BATCH,
                            target_batch_size=64))
    service = CoordinatorService(storage, runs, publisher=None, ledger=Ledger(storage, runs), initial_peers=[])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=server_threads), interceptors=[RpcErrorInterceptor()])
    pb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(service), server)
    port = free_port()
    endpoint = Endpoint(f"127.0.0.1:{port}")
    if tls:  # the self-signed certificate a coordinator makes, pinned by the clients as volunteers pin it
        made = server_tls(Path(tempfile.mkdtemp(prefix="nomoat-bench-tls-")), "127.0.0.1", tls_on_loopback=True)
        assert made is not None
        server.add_secure_port(endpoint.address, made.credentials())
        endpoint = Endpoint(endpoint.address, fingerprint=made.fingerprint)
    else:
        server.add_insecure_port(endpoint.address)
    server.start()
    keys = Path(tempfile.mkdtemp(prefix="nomoat-bench-keys-"))
    key_paths = []
    for index in range(workers):
        identity = load_or_create_identity(keys / f"worker{index}.key")
        storage.runs.register_worker(RUN, identity.peer_id, f"worker{index}", [0], 0, "cpu")
        key_paths.append(str(identity.path))
    started = time.time() - per_worker - 5
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    groups = [key_paths[index::processes] for index in range(processes)]
    clients = [context.Process(target=_client_process, args=(endpoint, group, per_worker, started, ready, go,
                                                              results)) for group in groups if group]
    for process in clients:
        process.start()
    for _ in clients:
        ready.get(timeout=600)
    begin = time.perf_counter()
    go.set()
    latencies = [latency for _ in clients for latency in results.get(timeout=600)]
    wall = time.perf_counter() - begin
    for process in clients:
        process.join()
    stored = storage.ledger.samples_by_shard(RUN)
    server.stop(grace=0).wait()
    storage.close()
    drop()
    expected = workers * per_worker * 4 * BATCH
    assert stored == {0: expected}, f"stored {stored}, expected {expected}"
    latencies.sort()
    return {"db": kind + (" tls" if tls else ""), "workers": workers, "receipts": len(latencies), "wall_s": wall,
            "per_s": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="postgresql")
    parser.add_argument("--workers", type=int, default=64, help="simulated workers (one identity each)")
    parser.add_argument("--receipts", type=int, default=40, help="receipts per worker")
    parser.add_argument("--processes", type=int, default=4, help="client processes the workers are spread over")
    parser.add_argument("--server-threads", type=int, default=32)
    parser.add_argument("--tls", action="store_true", help="serve TLS (self-signed, pinned by the clients)")
    args = parser.parse_args()
    kinds = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    print(f"{'db':<15} {'workers':>7} {'receipts':>8} {'wall s':>7} {'receipts/s':>10} {'p50 ms':>7} {'p99 ms':>7}")
    for kind in kinds:
        row = run(kind, args.workers, args.receipts, args.processes, args.server_threads, tls=args.tls)
        print(f"{row['db']:<15} {row['workers']:>7} {row['receipts']:>8} {row['wall_s']:>7.1f} {row['per_s']:>10.1f} "
              f"{row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f}", flush=True)


if __name__ == "__main__":
    from swarm.log import configure_logging

    configure_logging()
    main()
