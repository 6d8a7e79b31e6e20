"""RPC latency of Join and SubmitReceipts on loopback: plaintext vs TLS with a pinned certificate and a join token,
and, with ``--tree``, the same calls against another checkout's coordinator (e.g. the one before the hardening).

Each mode starts a real ``swarm coordinator`` process, launches a run, then times sequential calls from one
client: Joins (signed with the worker's key where the coordinator checks signatures) and SubmitReceipts of one
signed receipt each. Prints p50 / p99 in milliseconds.

    .venv/bin/python benchmarks/rpc_latency.py                          # plain and tls-auth, this checkout
    git worktree add /tmp/nomoat-before 84c014d
    .venv/bin/python benchmarks/rpc_latency.py --tree /tmp/nomoat-before --modes plain   # before the hardening
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nomoat_proto import coordinator_pb2 as pb  # noqa: E402  (the wire format is the same in older checkouts)
from nomoat_proto import coordinator_pb2_grpc as pb_grpc  # noqa: E402
from swarm.client import CHANNEL_OPTIONS, CoordinatorClient, Endpoint  # noqa: E402
from swarm.identity import load_or_create_identity  # noqa: E402
from swarm.local_swarm import free_port  # noqa: E402
from swarm.receipts import Receipt, sign_receipt  # noqa: E402
from swarm.tls import ensure_certificate, fingerprint_of  # noqa: E402

RUN = "latency"
HERE = Path(__file__).resolve().parents[1]


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return f"p50 {statistics.median(ordered) * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms  (n={len(ordered)})"


class Server:
    """A coordinator process of ``tree`` on loopback; ``tls`` serves a certificate the client pins."""

    def __init__(self, tree: Path, workdir: Path, tls: bool):
        self.tree, self.workdir, self.tls = tree, workdir, tls
        self.new_cli = (tree / "nomoat_cli").is_dir()
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        args = ["coordinator", "--data-dir", str(workdir / "coordinator"), "--port", str(port), "--no-publish"]
        self.fingerprint = None
        if tls:
            cert, _ = ensure_certificate(workdir / "tls", ["127.0.0.1"])
            self.fingerprint = fingerprint_of(cert)
            args += ["--tls-cert", str(workdir / "tls" / "cert.pem"), "--tls-key", str(workdir / "tls" / "key.pem")]
        module = "nomoat_cli" if self.new_cli else "swarm.cli"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=tree, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.process.stdout:  # type: ignore[union-attr]
            if line.startswith("initial peers"):
                break
        else:
            raise RuntimeError("the coordinator did not start")

    def operator_metadata(self) -> tuple[tuple[str, str], ...]:
        token_file = self.workdir / "coordinator" / "operator.token"
        return (("authorization", f"Bearer {token_file.read_text().strip()}"),) if token_file.exists() else ()

    def channel(self) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        cert = (self.workdir / "tls" / "cert.pem").read_bytes()
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(root_certificates=cert),
                                   options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", "127.0.0.1")])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def measure(tree: Path, mode: str, joins: int, receipts: int) -> None:
    with tempfile.TemporaryDirectory(prefix="nomoat-latency-") as folder:
        workdir = Path(folder)
        server = Server(tree, workdir, tls=mode == "tls-auth")
        try:
            stub = pb_grpc.CoordinatorStub(server.channel())
            spec = json.dumps({"name": RUN, "data_slices": 1, "batch_size_per_step": 4, "target_batch_size": 64})
            policy = "token" if mode == "tls-auth" else "open"
            request = pb.LaunchRunRequest(spec_json=spec, join_policy=policy) if server.new_cli else \
                pb.LaunchRunRequest(spec_json=spec)
            stub.LaunchRun(request, timeout=300, metadata=server.operator_metadata())
            join_token = ""
            if mode == "tls-auth":
                created = stub.CreateJoinToken(pb.CreateJoinTokenRequest(run_name=RUN, label="bench"),
                                               metadata=server.operator_metadata())
                join_token = created.token
            identity = load_or_create_identity(workdir / "worker.key")
            endpoint = Endpoint(server.address, fingerprint=server.fingerprint, join_token=join_token or None)
            join_times = []
            with CoordinatorClient(endpoint) as client:
                for _ in range(joins):
                    started = time.perf_counter()
                    if server.new_cli:
                        client.join(identity, run_name=RUN, display_name="bench")
                    else:  # a coordinator from before signed Joins: the request it knows
                        stub.Join(pb.JoinRequest(run_name=RUN, peer_id=identity.peer_id, display_name="bench"))
                    join_times.append(time.perf_counter() - started)
                t0, statuses, receipt_times = time.time(), {}, []
                time.sleep(0.5)  # every receipt's interval lies after the Joins and before now
                for index in range(receipts):
                    begin = t0 + index * 0.002
                    receipt = Receipt.new(run=RUN, shard=0, peer_id=identity.peer_id, epoch=0, steps=1, samples=4,
                                          tokens=100, compute_seconds=0.001, loss=4.0, started_at=begin,
                                          ended_at=begin + 0.002)
                    signed = sign_receipt(receipt, identity)
                    started = time.perf_counter()
                    [result] = client.submit_receipts([signed])
                    receipt_times.append(time.perf_counter() - started)
                    statuses[result.status] = statuses.get(result.status, 0) + 1
            label = f"{mode:8s} {tree.name if tree != HERE else 'this checkout'}"
            print(f"{label}  Join            {percentiles(join_times)}")
            print(f"{label}  SubmitReceipts  {percentiles(receipt_times)}  {statuses}")
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=HERE, help="checkout whose coordinator to measure")
    parser.add_argument("--modes", default="plain,tls-auth", help="comma-separated: plain, tls-auth")
    parser.add_argument("--joins", type=int, default=200)
    parser.add_argument("--receipts", type=int, default=200)
    args = parser.parse_args()
    for mode in args.modes.split(","):
        measure(args.tree.resolve(), mode, args.joins, args.receipts)


if __name__ == "__main__":
    main()
