"""A lying or honest stand-in peer of a shard, as its own process, for the trust tests: with its own identity key it
can serve a given state at a given epoch (like tests/state_peer.py), stream a state far bigger than any shard's
(without holding it), publish a hivemind progress record signed with its own key (naming itself or a victim, at
any epoch, with any samples/s), and overwrite other peers' unsigned ``all_averagers`` entries.

``python -m tests.fake_peer --initial-peer MADDR --run-id RUN_shard0 --identity KEY [options]`` prints its peer
ID once it serves and has stored its records, re-stores them every few seconds, and shuts down on SIGTERM.
"""

import argparse
import signal
import threading
from pathlib import Path
from functools import partial
from typing import AsyncIterator

import hivemind
import torch
from hivemind.optim import state_averager as hivemind_state_averager
from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2, runtime_pb2
from hivemind.utils import get_dht_time

from swarm.dht import progress_validators, shard_progress_key, shard_state_prefix, shard_state_sharers_key
from swarm.identity import Identity, load_or_create_identity
from swarm.peer_access import SwarmAuthorizer, issue_access_token, token_from_bytes, token_to_bytes


class TrainingStateAverager(hivemind_state_averager.TrainingStateAverager):
    """Same class name as hivemind's (handler names derive from it); streams ``flood_bytes`` of one endless
    tensor in 1 MiB parts, built from one reused buffer, so this process never holds the stream."""

    flood_bytes = 0

    async def rpc_download_state(self, _request: averaging_pb2.DownloadRequest,
                                 _context: P2PContext) -> AsyncIterator[averaging_pb2.DownloadData]:
        if not self.flood_bytes:
            async for message in super().rpc_download_state(_request, _context):
                yield message
            return
        chunk = bytes(2**20)
        metadata = self.serializer.dumps(dict(epoch=self.local_epoch))
        for index in range(self.flood_bytes // len(chunk)):
            part = runtime_pb2.Tensor(buffer=chunk, size=[self.flood_bytes // 4], dtype="float32" if index == 0 else "",
                                      compression=runtime_pb2.CompressionType.NONE, requires_grad=False)
            yield averaging_pb2.DownloadData(tensor_part=part, metadata=metadata if index == 0 else b"")


def access_options(authority: Identity, identity_path: Path, run: str) -> list[str]:
    """The options that give the fake peer under ``identity_path`` an access token of ``run`` signed by
    ``authority`` (the coordinator's identity), as a worker gets from its Join: with it, it passes the DHT
    authorizer, as an attacker that joined (this run, or any run of the coordinator) does."""
    identity = load_or_create_identity(identity_path)
    token = issue_access_token(authority, run, identity.public_key_der, lifetime_s=3600)
    token_file, key_file = identity_path.with_suffix(".token"), identity_path.with_suffix(".authority")
    token_file.write_bytes(token_to_bytes(token))
    key_file.write_bytes(authority.public_key_der)
    return ["--access-token", str(token_file), "--authority-key", str(key_file)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--initial-peer", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--state", help="a torch.save'd list of tensors to serve as the shard's state")
    parser.add_argument("--state-epoch", type=int, default=0)
    parser.add_argument("--flood-bytes", type=int, default=0, help="serve a state stream of this many bytes")
    parser.add_argument("--progress-epoch", type=int, help="publish a progress record at this epoch")
    parser.add_argument("--progress-peer", help="the peer ID the record names (default: this peer's own)")
    parser.add_argument("--samples-per-second", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=0)
    parser.add_argument("--hide", nargs="*", default=[], help="peer IDs whose all_averagers entries to overwrite")
    parser.add_argument("--access-token", help="a file holding this peer's access token (a coordinator's DHT "
                        "admits no peer without one)")
    parser.add_argument("--authority-key", help="a file holding the coordinator's public key (DER)")
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    identity = load_or_create_identity(args.identity)
    access = {}
    if args.access_token:
        access["authorizer"] = SwarmAuthorizer(identity.as_hivemind_key(), Path(args.authority_key).read_bytes(),
                                               token=token_from_bytes(Path(args.access_token).read_bytes()))
    dht = hivemind.DHT(initial_peers=[args.initial_peer], host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                       identity_path=str(identity.path), start=True, **access)
    validators = progress_validators(args.run_id, identity.as_hivemind_key())
    dht.add_validators(validators)
    averager = None
    if args.state or args.flood_bytes:
        tensors = torch.load(args.state) if args.state else [torch.zeros(4)]
        TrainingStateAverager.flood_bytes = args.flood_bytes
        averager = TrainingStateAverager(dht=dht, optimizer=partial(torch.optim.SGD, lr=0.1),
                                         params=[torch.nn.Parameter(t.clone()) for t in tensors],
                                         prefix=shard_state_prefix(args.run_id), allow_state_sharing=True, start=True)
        averager.local_epoch = args.state_epoch
        averager.state_sharing_priority = args.state_epoch

    def store_records() -> None:
        expiration = get_dht_time() + 60
        if args.progress_epoch is not None:
            named = PeerID.from_base58(args.progress_peer) if args.progress_peer else dht.peer_id
            progress = LocalTrainingProgress(peer_id=named.to_bytes(), epoch=args.progress_epoch,
                                             samples_accumulated=args.samples,
                                             samples_per_second=args.samples_per_second, time=get_dht_time(),
                                             client_mode=False)
            assert dht.store(shard_progress_key(args.run_id), subkey=validators[1].local_public_key,
                             value=progress.dict(), expiration_time=expiration)
        for victim in args.hide:  # unsigned entries: anyone may write any peer's
            dht.store(shard_state_sharers_key(args.run_id), subkey=PeerID.from_base58(victim).to_bytes(),
                      value="gone", expiration_time=expiration + 600)

    store_records()
    print(dht.peer_id, flush=True)
    try:
        while not stop.wait(5.0):
            store_records()
    finally:
        if averager is not None:
            averager.shutdown()
        dht.shutdown()


if __name__ == "__main__":
    main()
