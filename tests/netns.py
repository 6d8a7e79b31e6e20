"""A simulated multi-host network on one machine: every host is a Linux network namespace with its own address
on a shared bridge, optionally behind a bandwidth cap (``tc ... tbf``), behind NAT (a router namespace that
masquerades and drops inbound connections, so the host can only dial out), or cut off and reconnected.

Used by the network and fault tests and by the benchmarks; it needs root (``ip netns add``). Everything is
created under a name prefix unique to this process (``nmt<pid>x<random>``), and ``Network.close`` (also run at
exit, and by the fixtures' finalizers) kills every process left in its namespaces and deletes them; namespaces
left by a process that no longer exists (a run killed with SIGKILL) are swept when the next one starts.

Layout (subnet picked at random in 10.64-127.x.0/24 among those unused on this machine)::

    root ns (.254) ──veth──┐
    coordinator (.1) ──────┤ bridge br0 in namespace <prefix>-lan
    worker0 (.2)  ─────────┤
    router (.R) ───────────┘── NAT ── natted host (192.168.N.2, default route via the router)

Usage::

    with Network() as net:
        coordinator = net.add_host("coordinator")
        worker = net.add_host("worker0", rate_mbit=50)
        hidden = net.add_host("worker1", nat=True)
        with NetSwarm(net, workdir) as swarm:
            address = swarm.start_coordinator_on(coordinator)
            swarm.start_worker_on(worker, address, "run", 0)
            swarm.start_worker_on(hidden, address, "run", 1)   # joins with --client-mode
            net.cut(worker); ...; net.reconnect(worker)
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import random
import re
import signal
import subprocess
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

from swarm.local_swarm import CLI, LocalSwarm

PREFIX = "nmt"


class NetworkUnavailable(RuntimeError):
    """Network namespaces cannot be created here (not root, no iproute2, or a sandbox forbids it)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"[{ns}] {' '.join(cmd)}: {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can (creates and deletes a probe namespace)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"{PREFIX}{os.getpid()}xprobe{uuid.uuid4().hex[:4]}"
    try:
        result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    except FileNotFoundError:
        return "iproute2 (the ip command) is not installed"
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def iptables_unavailable_reason() -> str | None:
    """NAT and cut/reconnect need iptables (Debian: apt-get install iptables)."""
    try:
        subprocess.run(["iptables", "--version"], capture_output=True, check=True)
    except (FileNotFoundError, subprocess.CalledProcessError):
        return "iptables is not installed (NAT'ed hosts and network cuts need it)"
    return None


def _kill_namespace(ns: str) -> None:
    """SIGKILL every process in the namespace, then delete it (its veths go with it)."""
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces made by harness processes that no longer exist; returns their names."""
    swept = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.match(rf"{PREFIX}(\d+)x", name)
        if not match:
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # its owner still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _kill_namespace(name)
        swept.append(name)
    return swept


def _used_networks() -> list[ipaddress.IPv4Network]:
    text = _ip("-4", "-o", "addr", "show", check=False).stdout + _ip("-4", "route", check=False).stdout
    found = []
    for cidr in re.findall(r"(\d+\.\d+\.\d+\.\d+/\d+)", text):
        found.append(ipaddress.ip_network(cidr, strict=False))
    return found


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for _ in range(200):
        candidate = ipaddress.ip_network(f"10.{random.randint(64, 127)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise NetworkUnavailable("no free 10.x.y.0/24 subnet")


@dataclass
class Host:
    """One simulated machine: a namespace and the address other hosts reach it at (for a NAT'ed host, the
    private address nobody outside can dial)."""

    name: str
    ns: str
    address: str
    nat: bool = False
    iface: str = "eth0"  # its link towards the network
    lan_port: str = ""  # the other end of that link (on the bridge, or on the NAT router)
    lan_ns: str = ""

    def command(self, *cmd: str) -> list[str]:
        """``cmd`` run inside this host."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return _in_ns(self.ns, *cmd, check=check)


_open_networks: "weakref.WeakSet[Network]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for network in list(_open_networks):
        network.close()


class Network:
    """The bridge and its hosts; see the module docstring. ``close`` is idempotent and never raises."""

    def __init__(self, tag: str = ""):
        reason = unavailable_reason()
        if reason:
            raise NetworkUnavailable(reason)
        sweep_stale()
        self.prefix = f"{PREFIX}{os.getpid()}x{uuid.uuid4().hex[:6]}{tag[:8]}"
        self.subnet = _pick_subnet()
        self._addresses = self.subnet.hosts()
        self.lan = f"{self.prefix}-lan"
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self._root_link = f"nm{uuid.uuid4().hex[:10]}"
        self._ports = 0
        _open_networks.add(self)
        try:
            self._add_ns(self.lan)
            _in_ns(self.lan, "ip", "link", "add", "br0", "type", "bridge")
            _in_ns(self.lan, "ip", "link", "set", "br0", "up")
            # the machine running the tests (root namespace) sits on the bridge too, at .254
            self.root_address = str(self.subnet.network_address + 254)
            _ip("link", "add", self._root_link, "type", "veth", "peer", "name", "proot", "netns", self.lan)
            _in_ns(self.lan, "ip", "link", "set", "proot", "master", "br0", "up")
            _ip("addr", "add", f"{self.root_address}/24", "dev", self._root_link)
            _ip("link", "set", self._root_link, "up")
        except Exception:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _in_ns(ns, "ip", "link", "set", "lo", "up")

    def _next_port(self) -> str:
        self._ports += 1
        return f"p{self._ports}"

    def _plug(self, ns: str, iface: str, address: str) -> str:
        """A veth from ``ns`` (named ``iface``, with ``address``) to a new port of the bridge."""
        port = self._next_port()
        _ip("link", "add", iface, "netns", ns, "type", "veth", "peer", "name", port, "netns", self.lan)
        _in_ns(self.lan, "ip", "link", "set", port, "master", "br0", "up")
        _in_ns(ns, "ip", "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", iface)
        _in_ns(ns, "ip", "link", "set", iface, "up")
        return port

    def add_host(self, name: str, rate_mbit: float | None = None, nat: bool = False) -> Host:
        """A new host on the bridge (or, with ``nat``, behind its own NAT router); ``rate_mbit`` caps its link
        both ways."""
        ns = f"{self.prefix}-{name}"
        self._add_ns(ns)
        if not nat:
            address = str(next(self._addresses))
            port = self._plug(ns, "eth0", address)
            host = Host(name, ns, address, iface="eth0", lan_port=port, lan_ns=self.lan)
        else:
            reason = iptables_unavailable_reason()
            if reason:
                raise NetworkUnavailable(reason)
            router = f"{ns}-router"
            self._add_ns(router)
            public = str(next(self._addresses))
            self._plug(router, "eth0", public)
            private = ipaddress.ip_network(f"192.168.{random.randint(1, 254)}.0/24")
            gateway, address = str(private.network_address + 1), str(private.network_address + 2)
            _ip("link", "add", "eth1", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _in_ns(router, "ip", "addr", "add", f"{gateway}/24", "dev", "eth1")
            _in_ns(router, "ip", "link", "set", "eth1", "up")
            _in_ns(ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            _in_ns(ns, "ip", "link", "set", "eth0", "up")
            _in_ns(ns, "ip", "route", "add", "default", "via", gateway)
            _in_ns(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            _in_ns(router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE")
            # replies to connections the host opened come back; nothing else gets in
            _in_ns(router, "iptables", "-A", "FORWARD", "-i", "eth0", "-o", "eth1", "-m", "conntrack",
                   "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
            _in_ns(router, "iptables", "-A", "FORWARD", "-i", "eth0", "-o", "eth1", "-j", "DROP")
            host = Host(name, ns, address, nat=True, iface="eth0", lan_port="eth1", lan_ns=router)
        self.hosts[name] = host
        if rate_mbit:
            self.cap(host, rate_mbit)
        return host

    def cap(self, host: Host, rate_mbit: float) -> None:
        """Limit the host's link to ``rate_mbit`` in each direction (token bucket on both ends of its veth)."""
        rate_bytes = rate_mbit * 1e6 / 8
        burst = max(16_000, int(rate_bytes / 100))  # >= rate / HZ, or tbf cannot reach the rate
        for ns, dev in ((host.ns, host.iface), (host.lan_ns, host.lan_port)):
            _in_ns(ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                   "burst", str(burst), "latency", "100ms")

    def uncap(self, host: Host) -> None:
        for ns, dev in ((host.ns, host.iface), (host.lan_ns, host.lan_port)):
            _in_ns(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)

    _CUT_RULES = (("INPUT", "-i"), ("OUTPUT", "-o"))

    def cut(self, host: Host) -> None:
        """Pull the host's cable: every packet in or out is dropped silently (connections hang, then time
        out) until ``reconnect``; processes keep running."""
        reason = iptables_unavailable_reason()
        if reason:
            raise NetworkUnavailable(reason)
        for chain, flag in self._CUT_RULES:
            host.run("iptables", "-I", chain, "1", "!", flag, "lo", "-j", "DROP")

    def reconnect(self, host: Host) -> None:
        for chain, flag in self._CUT_RULES:
            host.run("iptables", "-D", chain, "!", flag, "lo", "-j", "DROP", check=False)

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            _kill_namespace(ns)
        self.namespaces = []
        _ip("link", "del", self._root_link, check=False)  # normally gone with the lan namespace
        _open_networks.discard(self)

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class NetSwarm(LocalSwarm):
    """``LocalSwarm`` whose coordinator and workers each run on a host of a ``Network``.

    The coordinator listens on its host's address; public workers listen on theirs, NAT'ed workers join with
    ``--client-mode``. The test process reaches the coordinator over the bridge (it sits at ``.254``)."""

    def __init__(self, network: Network, workdir: Path, env: dict[str, str] | None = None):
        super().__init__(workdir, env)
        self.network = network
        self._placing: Host | None = None
        self.placement: dict[str, Host] = {}  # log name -> host

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        host = self._placing
        assert host is not None, "use start_coordinator_on / start_worker_on"
        self.placement[log_name] = host
        log = (self.workdir / log_name).open("ab")
        return subprocess.Popen(host.command(*CLI, *args), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)

    def start_coordinator_on(self, host: Host, extra: list[str] = (), port: int | None = None,
                             timeout: float = 120.0) -> str:
        self._placing = host
        return self.start_coordinator(["--host", host.address, *extra], port=port or 50051, timeout=timeout)

    def start_worker_on(self, host: Host, coordinator: str, run: str, index: int, extra: list[str] = ()):
        self._placing = host
        where = ["--client-mode"] if host.nat else ["--host", host.address]
        return self.start_worker(coordinator, run, index, [*where, *extra])

    def kill_worker(self, index: int) -> None:
        """SIGKILL a worker and everything it started (its p2pd and averager processes)."""
        process = self.workers[index]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


_SINK = ("import socket,sys\n"
         "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8); print('ready', flush=True)\n"
         "while True:\n"
         "    c,_=s.accept()\n"
         "    while c.recv(1<<16): pass\n"
         "    c.sendall(b'ok'); c.close()\n")

_SEND = ("import socket,sys,time\n"
         "t=time.monotonic(); c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))\n"
         "data=b'x'*int(sys.argv[3]); c.sendall(data); c.shutdown(socket.SHUT_WR); assert c.recv(2)==b'ok'\n"
         "print(time.monotonic()-t)\n")


def start_sink(host: Host, port: int) -> subprocess.Popen:
    """A TCP server on ``host`` that reads whatever a client sends and answers ``ok``; kill it when done."""
    import sys

    process = subprocess.Popen(host.command(sys.executable, "-c", _SINK, host.address, str(port)),
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def send_bytes(host: Host, address: str, port: int, size: int, timeout: float = 3.0) -> float | None:
    """Seconds ``host`` takes to send ``size`` bytes to ``address:port`` and get the answer, or None when it
    cannot connect (refused, unreachable, or no answer within ``timeout``)."""
    import sys

    try:
        result = subprocess.run(host.command(sys.executable, "-c", _SEND, address, str(port), str(size),
                                             str(timeout)), capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        return None
    return float(result.stdout) if result.returncode == 0 else None
