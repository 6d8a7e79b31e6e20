"""TLS for the coordinator's gRPC API: the server's certificate (the operator's, or one made on first start), and
how a client decides whom to trust: a CA file, a pinned certificate fingerprint, or the system's roots.

A fingerprint is ``sha256:`` and the hex sha256 of the certificate's DER bytes, the way ``swarm coordinator``
prints it. Pinning works for self-signed certificates: the client reads the certificate the server presents,
checks its fingerprint, and then trusts exactly that certificate for the connection (a different one presented on
the real connection fails the TLS handshake).

Usage::

    cert, key = ensure_certificate(data_dir / "tls", hosts=["coordinator.example.org"])
    server.add_secure_port("0.0.0.0:50051", server_credentials(cert, key))
    credentials, options = channel_credentials("coordinator.example.org:50051", fingerprint="sha256:ab12...")
    channel = grpc.secure_channel("coordinator.example.org:50051", credentials, options=options)
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarm.private_files import private_folder, write_private_file

CERT_FILE, KEY_FILE = "cert.pem", "key.pem"


class TlsError(RuntimeError):
    """A certificate could not be made, read or trusted; the message says what to do."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TlsError(f"coordinator address must be HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port)


def fingerprint_of(cert_pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept ``sha256:HEX``, bare hex, or hex with colons (as openssl prints it)."""
    hexdigest = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
        raise TlsError(f"not a sha256 certificate fingerprint: {text!r}")
    return "sha256:" + hexdigest


def ensure_certificate(folder: Path, hosts: list[str]) -> tuple[bytes, bytes]:
    """The certificate and key kept in ``folder``, made (self-signed, EC P-256, ten years) on first use for
    ``hosts`` (names and IP addresses the coordinator is reached by)."""
    folder = Path(folder)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if cert_path.is_file() and key_path.is_file():
        return read_certificate(cert_path, key_path)
    private_folder(folder)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "nomoat-coordinator")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    write_private_file(key_path, key_pem)
    write_private_file(cert_path, cert_pem)
    return cert_pem, key_pem


def read_certificate(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    try:
        cert_pem, key_pem = Path(cert_path).read_bytes(), Path(key_path).read_bytes()
        x509.load_pem_x509_certificate(cert_pem)
        serialization.load_pem_private_key(key_pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TlsError(f"cannot use the TLS certificate {cert_path} with key {key_path}: {exc}") from None
    return cert_pem, key_pem


def server_credentials(cert_pem: bytes, key_pem: bytes) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key_pem, cert_pem)])


def presented_certificate(address: str, timeout: float = 10.0) -> bytes:
    """The certificate the server at ``address`` presents (not verified: only to compare with a pin)."""
    host, port = split_address(address)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as wrapped:
                der = wrapped.getpeercert(binary_form=True)
    except ssl.SSLError as exc:  # something answered, but not with TLS (a plaintext coordinator, another service)
        raise TlsError(f"the coordinator at {address} does not speak TLS ({exc}); if its operator serves it with "
                       f"--insecure, pass --insecure instead of --fingerprint (plaintext: anyone on the path can "
                       f"read and change what you send)") from None
    except OSError as exc:
        raise TlsError(f"coordinator at {address} is unreachable ({exc})") from None
    if der is None:
        raise TlsError(f"the server at {address} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def _a_name_of(cert_pem: bytes) -> str:
    """A name the certificate is valid for, to check the pinned certificate under."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
        return str(names.get_values_for_type(x509.IPAddress)[0])
    except (x509.ExtensionNotFound, IndexError):
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def channel_credentials(address: str, ca_file: Path | None = None, fingerprint: str | None = None
                        ) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]]]:
    """Credentials (and channel options) that trust exactly what was asked: the pinned certificate, the CA file,
    or, with neither, the system's roots."""
    if fingerprint:
        wanted = normalize_fingerprint(fingerprint)
        cert_pem = presented_certificate(address)
        got = fingerprint_of(cert_pem)
        if got != wanted:
            raise TlsError(f"the coordinator at {address} presented certificate {got}, not the pinned {wanted}: "
                           f"refusing to connect (a different server, or the operator changed its certificate: "
                           f"check with the operator the fingerprint `swarm coordinator` prints)")
        return grpc.ssl_channel_credentials(root_certificates=cert_pem), [
            ("grpc.ssl_target_name_override", _a_name_of(cert_pem))]
    if ca_file:
        try:
            roots = Path(ca_file).read_bytes()
        except OSError as exc:
            raise TlsError(f"cannot read the CA file {ca_file}: {exc}") from None
        return grpc.ssl_channel_credentials(root_certificates=roots), []
    return grpc.ssl_channel_credentials(), []
