"""TLS between clients and a real coordinator on loopback: who is answered (a pinned fingerprint, the certificate
as CA), who is refused with a clear error and without a request sent (another pin, an unrelated CA, plaintext to
a TLS server, TLS to a plaintext one), when the coordinator serves TLS at all, its self-signed certificate kept
across restarts with a 0600 key, and the CLI path (``swarm coordinator --tls-cert``, ``swarm status --fingerprint``).
"""

import logging
import socket
import ssl
import subprocess
import sys
import threading

import pytest
from typer.testing import CliRunner

from coordinator.server import Coordinator, CoordinatorConfig
from coordinator.transport import TLS_FOLDER, server_tls, serves_tls
from coordinator_process import CoordinatorProcess
from nomoat_cli.app import app
from swarm.client import CoordinatorClient, CoordinatorError, Endpoint
from swarm.tls import CERT_FILE, KEY_FILE, TlsError, ensure_certificate, fingerprint_of, is_loopback

OTHER_FINGERPRINT = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def tls_coordinator(tmp_path_factory):
    """A coordinator on loopback that serves TLS with the self-signed certificate it made in its data dir."""
    config = CoordinatorConfig(data_dir=tmp_path_factory.mktemp("tls-coord"), port=0, publish=False,
                               tls_on_loopback=True)
    with Coordinator(config) as running:
        yield running


@pytest.fixture
def requests_seen(tls_coordinator, monkeypatch):
    """The GetStatus and LaunchRun requests that reached the coordinator's service during the test."""
    seen: list[str] = []
    service = tls_coordinator.service
    real_status, real_launch = service.status, service.launch
    monkeypatch.setattr(service, "status", lambda *args: seen.append("status") or real_status(*args))
    monkeypatch.setattr(service, "launch", lambda *args: seen.append("launch") or real_launch(*args))
    return seen


def _refusal(endpoint: Endpoint) -> str:
    with pytest.raises(CoordinatorError) as refused:
        with CoordinatorClient(endpoint, timeout=10) as client:
            client.status()
    return str(refused.value)


def _certificate(coordinator: Coordinator):
    return coordinator.config.data_dir / TLS_FOLDER / CERT_FILE


def test_a_client_pinning_the_fingerprint_is_answered(tls_coordinator, requests_seen):
    fingerprint = tls_coordinator.tls_fingerprint
    assert fingerprint == fingerprint_of(_certificate(tls_coordinator).read_bytes())
    openssl_style = ":".join(fingerprint.removeprefix("sha256:")[i:i + 2] for i in range(0, 64, 2)).upper()
    for pin in (fingerprint, openssl_style):
        with CoordinatorClient(Endpoint(tls_coordinator.address, fingerprint=pin)) as client:
            assert list(client.status().runs) == []
    assert requests_seen == ["status", "status"]


def test_a_client_trusting_the_certificate_as_its_ca_is_answered(tls_coordinator):
    port = tls_coordinator.address.rsplit(":", 1)[1]
    for host in ("127.0.0.1", "localhost"):  # both are names the self-signed certificate is made for
        with CoordinatorClient(Endpoint(f"{host}:{port}", ca_file=_certificate(tls_coordinator))) as client:
            assert list(client.status().runs) == []


def test_a_client_pinning_another_certificate_is_refused_and_sends_nothing(tls_coordinator, requests_seen):
    message = _refusal(Endpoint(tls_coordinator.address, fingerprint=OTHER_FINGERPRINT))
    assert f"presented certificate {tls_coordinator.tls_fingerprint}, not the pinned {OTHER_FINGERPRINT}" in message
    assert "refusing to connect" in message
    assert requests_seen == []


class _TlsListener:
    """A TLS server that completes handshakes and records how many application bytes each connection carried."""

    def __init__(self, folder):
        cert, _ = ensure_certificate(folder, ["127.0.0.1"])
        self.fingerprint = fingerprint_of(cert)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.set_alpn_protocols(["h2"])
        self.context.load_cert_chain(folder / CERT_FILE, folder / KEY_FILE)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.received: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            received = 0
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    while chunk := conn.recv(65536):
                        received += len(chunk)
            except (OSError, ssl.SSLError):
                pass
            self.received.append(received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close()


def test_a_pin_mismatch_is_found_before_any_request_byte_is_sent(tmp_path):
    """Not even the HTTP/2 preface: the only connection is the certificate probe, and it carries no data."""
    listener = _TlsListener(tmp_path / "listener")
    try:
        message = _refusal(Endpoint(listener.address, fingerprint=OTHER_FINGERPRINT))
    finally:
        listener.close()
    assert f"presented certificate {listener.fingerprint}, not the pinned" in message
    assert listener.received == [0]


def test_a_client_with_an_unrelated_ca_is_refused(tls_coordinator, tmp_path, requests_seen):
    ensure_certificate(tmp_path / "elsewhere", ["127.0.0.1"])
    message = _refusal(Endpoint(tls_coordinator.address, ca_file=tmp_path / "elsewhere" / CERT_FILE))
    assert "its TLS certificate is not trusted" in message and "CERTIFICATE_VERIFY_FAILED" in message
    assert "--fingerprint sha256:" in message and "--ca FILE" in message  # what to do instead
    assert requests_seen == []


def test_a_plaintext_client_is_refused_by_a_tls_server(tls_coordinator, requests_seen):
    for plaintext in (Endpoint(tls_coordinator.address, insecure=True), Endpoint(tls_coordinator.address)):
        assert not plaintext.uses_tls()  # --insecure, or loopback without any trust given
        message = _refusal(plaintext)
        assert "is unreachable" in message and "if it serves TLS, pass --fingerprint or --ca" in message
    assert requests_seen == []


def test_a_tls_client_never_falls_back_to_plaintext(tmp_path):
    with Coordinator(CoordinatorConfig(data_dir=tmp_path / "plain", port=0, publish=False)) as plain:
        assert plain.tls_fingerprint is None and not (tmp_path / "plain" / TLS_FOLDER).exists()
        ensure_certificate(tmp_path / "ca", ["127.0.0.1"])
        for trusting in (Endpoint(plain.address, fingerprint=OTHER_FINGERPRINT),
                         Endpoint(plain.address, ca_file=tmp_path / "ca" / CERT_FILE)):
            message = _refusal(trusting)
            assert "does not speak TLS" in message and "pass --insecure" in message
        with CoordinatorClient(Endpoint(plain.address)) as client:  # loopback without trust: plaintext, as before
            assert list(client.status().runs) == []


@pytest.mark.parametrize("host, certificate, insecure, on_loopback, tls", [
    ("127.0.0.1", False, False, False, False),  # local use and the test suite stay plaintext
    ("localhost", False, False, False, False),
    ("::1", False, False, False, False),
    ("127.0.0.1", False, False, True, True),
    ("127.0.0.1", True, False, False, True),  # the operator's certificate is always served
    ("0.0.0.0", False, False, False, True),  # reachable from other machines: self-signed TLS
    ("10.20.30.40", False, False, False, True),
    ("coord.example.org", False, False, False, True),
    ("0.0.0.0", False, True, False, False),  # only when the operator asks for it
    ("10.20.30.40", False, True, False, False),
])
def test_when_the_coordinator_serves_tls(host, certificate, insecure, on_loopback, tls):
    assert serves_tls(host, has_certificate=certificate, insecure=insecure, tls_on_loopback=on_loopback) is tls


def test_insecure_off_loopback_is_a_loud_warning(tmp_path, caplog):
    root = logging.getLogger("nomoat")
    propagate, root.propagate = root.propagate, True  # configure_logging (a CLI test) may have stopped it
    try:
        with caplog.at_level(logging.WARNING, logger="nomoat"):
            assert server_tls(tmp_path, "0.0.0.0", "coord.example.org", insecure=True) is None
    finally:
        root.propagate = propagate
    assert any("INSECURE" in record.getMessage() and "PLAINTEXT" in record.getMessage() for record in caplog.records)
    assert not (tmp_path / TLS_FOLDER).exists()
    made = server_tls(tmp_path, "0.0.0.0", "coord.example.org")
    assert made is not None and made.self_signed


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine, other than loopback, that a server can bind (None if there is none)."""
    candidates: set[str] = set()
    try:
        candidates.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    for probe in ("192.0.2.1", "10.255.255.255"):  # a UDP "connect" sends nothing: it only picks a source address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.connect((probe, 9))
                candidates.add(udp.getsockname()[0])
            except OSError:
                pass
    for address in sorted(candidates):
        if is_loopback(address) or address == "0.0.0.0":
            continue
        with socket.socket() as sock:
            try:
                sock.bind((address, 0))
                return address
            except OSError:
                continue
    return None


def test_a_coordinator_on_a_non_loopback_address_serves_tls_unless_insecure(tmp_path):
    host = _non_loopback_address()
    if host is None:
        pytest.skip("this machine has no non-loopback address (the rule is tested by test_when_the_coordinator_"
                    "serves_tls)")
    with Coordinator(CoordinatorConfig(data_dir=tmp_path / "public", host=host, port=0, publish=False)) as public:
        assert public.tls_fingerprint and public.tls_self_signed
        assert _refusal(Endpoint(public.address, insecure=True))  # no plaintext there
        with CoordinatorClient(Endpoint(public.address, fingerprint=public.tls_fingerprint)) as client:
            assert list(client.status().runs) == []
        with CoordinatorClient(Endpoint(public.address, ca_file=_certificate(public))) as client:  # made for host
            assert list(client.status().runs) == []
        assert "not trusted" in _refusal(Endpoint(public.address))  # the system's roots do not know it
    config = CoordinatorConfig(data_dir=tmp_path / "asked", host=host, port=0, publish=False, insecure=True)
    with Coordinator(config) as insecure:
        assert insecure.tls_fingerprint is None and not (tmp_path / "asked" / TLS_FOLDER).exists()
        with CoordinatorClient(Endpoint(insecure.address, insecure=True)) as client:
            assert list(client.status().runs) == []


def test_the_self_signed_certificate_is_kept_across_a_restart_and_its_key_is_private(tmp_path):
    config = CoordinatorConfig(data_dir=tmp_path / "coord", port=0, publish=False, tls_on_loopback=True)
    with Coordinator(config) as first:
        fingerprint = first.tls_fingerprint
    folder = tmp_path / "coord" / TLS_FOLDER
    assert (folder / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    with Coordinator(config) as again:
        assert again.tls_fingerprint == fingerprint
        with CoordinatorClient(Endpoint(again.address, fingerprint=fingerprint)) as client:  # the old pin holds
            assert list(client.status().runs) == []


def test_contradictory_or_unreadable_tls_settings_fail_at_once(tmp_path):
    ensure_certificate(tmp_path / "operator", ["127.0.0.1"])
    cert, key = tmp_path / "operator" / CERT_FILE, tmp_path / "operator" / KEY_FILE
    with pytest.raises(ValueError, match="together"):
        CoordinatorConfig(data_dir=tmp_path / "c", tls_cert=cert)
    with pytest.raises(ValueError, match="--insecure"):
        CoordinatorConfig(data_dir=tmp_path / "c", tls_cert=cert, tls_key=key, insecure=True)
    with pytest.raises(ValueError, match="not both"):
        Endpoint("coord.example.org:50051", fingerprint=OTHER_FINGERPRINT, insecure=True)
    with pytest.raises(TlsError, match="cannot use the TLS certificate"):
        Coordinator(CoordinatorConfig(data_dir=tmp_path / "c", port=0, tls_cert=cert, tls_key=tmp_path / "none"))
    result = CliRunner().invoke(app, ["status", "-c", "127.0.0.1:1", "--fingerprint", "sha256:nothex"])
    assert result.exit_code == 2 and "not a sha256 certificate fingerprint" in result.output


def _swarm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "nomoat_cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_swarm_coordinator_with_a_certificate_and_swarm_status_pinning_it(tmp_path):
    ensure_certificate(tmp_path / "operator", ["127.0.0.1"])  # stands in for the operator's own certificate
    cert, key = tmp_path / "operator" / CERT_FILE, tmp_path / "operator" / KEY_FILE
    served = CoordinatorProcess(tmp_path / "coord", "--tls-cert", str(cert), "--tls-key", str(key)).start()
    try:
        fingerprint = fingerprint_of(cert.read_bytes())
        assert f"TLS certificate fingerprint: {fingerprint}\n" in served.lines
        assert f"--fingerprint {fingerprint}" in served.log()  # how a volunteer pins it
        assert not (tmp_path / "coord" / TLS_FOLDER).exists()  # the operator's certificate, none of its own
        pinned = _swarm("status", "-c", served.address, "--fingerprint", fingerprint)
        assert pinned.returncode == 0 and pinned.stdout.strip() == "no runs", pinned.stderr
        from_env = _swarm("status", "-c", served.address, env={"NOMOAT_FINGERPRINT": fingerprint})
        assert from_env.returncode == 0 and from_env.stdout.strip() == "no runs", from_env.stderr
        with_ca = _swarm("status", "-c", served.address, env={"NOMOAT_CA": str(cert)})
        assert with_ca.returncode == 0, with_ca.stderr
        wrong = _swarm("status", "-c", served.address, "--fingerprint", OTHER_FINGERPRINT)
        assert wrong.returncode == 2 and "not the pinned" in wrong.stderr
        assert served.alive()
    finally:
        served.stop()
