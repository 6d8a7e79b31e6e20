"""How the coordinator serves its gRPC port: TLS with the operator's certificate, TLS with a self-signed one made
on first start (kept in ``<data dir>/tls/``, so its fingerprint survives restarts), or plaintext.

The rule: an operator's certificate is always served. Without one, a coordinator listening on loopback serves
plaintext (only processes of this machine can reach it), and one that other machines can reach serves TLS with
its self-signed certificate, whose fingerprint volunteers pin. Plaintext off loopback only when the operator asks
for it (``insecure``), and then with a loud warning.

Usage::

    tls = server_tls(data_dir, host="0.0.0.0", announce_host="coord.example.org")
    if tls is None:
        server.add_insecure_port("0.0.0.0:50051")
    else:
        server.add_secure_port("0.0.0.0:50051", tls.credentials())
        print(tls.fingerprint)
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import grpc

from swarm.log import get_logger
from swarm.tls import ensure_certificate, fingerprint_of, is_loopback, read_certificate, server_credentials

logger = get_logger(__name__)

TLS_FOLDER = "tls"  # under the data dir: the self-signed certificate and its key (0600)
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class ServerTls:
    """The certificate the coordinator presents, and whether it made it itself."""

    cert_pem: bytes
    key_pem: bytes
    self_signed: bool  # made by the coordinator: clients pin its fingerprint (or use the cert file as --ca)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.cert_pem)

    def credentials(self) -> grpc.ServerCredentials:
        return server_credentials(self.cert_pem, self.key_pem)


def serves_tls(host: str, *, has_certificate: bool, insecure: bool, tls_on_loopback: bool = False) -> bool:
    """Whether a coordinator listening on ``host`` serves TLS: with a certificate always; otherwise unless the
    operator asked for plaintext or the host is loopback (and TLS was not asked for there)."""
    if has_certificate:
        return True
    if insecure:
        return False
    return tls_on_loopback or not is_loopback(host)


def certificate_hosts(host: str, announce_host: str | None) -> list[str]:
    """The names a self-signed certificate is made for: the announced address and the listen address, or this
    machine's host name when it listens on every interface and announces nothing."""
    hosts = [h for h in dict.fromkeys([announce_host or "", host]) if h not in _WILDCARDS]
    return hosts or [socket.gethostname()]


def server_tls(data_dir: Path, host: str, announce_host: str | None = None, *, tls_cert: Path | None = None,
               tls_key: Path | None = None, insecure: bool = False,
               tls_on_loopback: bool = False) -> ServerTls | None:
    """The TLS the coordinator serves under the rule above, or None for plaintext (logged loudly off loopback).
    Raises ``swarm.tls.TlsError`` when the operator's certificate or key cannot be read."""
    if tls_cert is not None and tls_key is not None:
        cert_pem, key_pem = read_certificate(Path(tls_cert).expanduser(), Path(tls_key).expanduser())
        return ServerTls(cert_pem, key_pem, self_signed=False)
    if not serves_tls(host, has_certificate=False, insecure=insecure, tls_on_loopback=tls_on_loopback):
        if not is_loopback(host):
            logger.warning("INSECURE: serving PLAINTEXT gRPC on %s (--insecure): anyone on the network path can "
                           "read and change every request and answer; use it only on a network you trust", host)
        return None
    folder = Path(data_dir) / TLS_FOLDER
    cert_pem, key_pem = ensure_certificate(folder, certificate_hosts(host, announce_host))
    return ServerTls(cert_pem, key_pem, self_signed=True)
