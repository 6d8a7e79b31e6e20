"""``swarm doctor``: what this machine can give a run, before a volunteer donates: its devices and their memory,
the precisions each can train in, and, given a coordinator, the round-trip time to it, the download rate of a
run's latest adapter, and whether this host looks reachable from outside or should donate with --client-mode.

Usage::

    for line in machine_report():
        print(line)
    for line in coordinator_report(endpoint, run="demo"):
        print(line)
"""

from __future__ import annotations

import ipaddress
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import torch

from swarm.client import CoordinatorClient, CoordinatorError, Endpoint
from swarm.memory_fit import GB
from swarm.paths import UserDirs
from swarm.precision import PRECISION_CHOICES, bitsandbytes_installed, unavailable_reason


def machine_report() -> Iterator[str]:
    memory = psutil.virtual_memory()
    yield f"cpu: {psutil.cpu_count(logical=True)} threads, {memory.total / GB:.1f} GB memory " \
          f"({memory.available / GB:.1f} GB available)"
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            yield f"cuda:{index}: {props.name}, {total / GB:.1f} GB ({free / GB:.1f} GB free), " \
                  f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
            devices.append(torch.device(f"cuda:{index}"))
    else:
        yield "cuda: none (torch sees no CUDA device; training runs on the CPU)"
    yield f"bitsandbytes (8bit, 4bit): {'installed' if bitsandbytes_installed() else 'not installed'}"
    for device in devices:
        usable = [name for name in PRECISION_CHOICES[1:] if not unavailable_reason(name, device)]
        yield f"precisions on {device}: {', '.join(usable)}"
    yield reachability()


def reachability() -> str:
    """Whether this host has a public address (peers can dial it) or only private ones (behind NAT)."""
    addresses = {entry.address for entries in psutil.net_if_addrs().values() for entry in entries
                 if entry.family in (socket.AF_INET, socket.AF_INET6)}
    public = sorted(a for a in addresses if _is_public(a))
    if public:
        return f"reachability: public address {public[0]}: peers can dial this host if its firewall lets the " \
               f"DHT port in (donate --host 0.0.0.0 --announce-host {public[0]})"
    return "reachability: only private addresses (behind NAT): donate with --client-mode, unless the router " \
           "forwards the DHT port to this host"


def _is_public(address: str) -> bool:
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return parsed.is_global


def coordinator_report(endpoint: Endpoint, run: str = "", tries: int = 5) -> Iterator[str]:
    with CoordinatorClient(endpoint) as client:
        rtts = []
        for _ in range(tries):
            started = time.monotonic()
            client.coordinator_info()
            rtts.append(time.monotonic() - started)
        yield f"coordinator {endpoint.address}: round trip {statistics.median(rtts) * 1000:.1f} ms " \
              f"(median of {tries})"
    if not run:
        yield "download rate: give --run RUN to time the download of its latest adapter"
        return
    from swarm.pull import PullError, pull

    with tempfile.TemporaryDirectory(prefix="nomoat-doctor-") as folder:
        dirs = UserDirs.from_environment()
        started = time.monotonic()
        try:
            pulled = pull(endpoint, run, Path(folder) / "adapter", user_dirs=dirs,
                          cache_dir=Path(folder) / "cache")
        except (PullError, CoordinatorError) as exc:
            yield f"download rate: could not pull run {run}: {exc}"
            return
        seconds = time.monotonic() - started
        size = sum(path.stat().st_size for path in Path(pulled.path).rglob("*") if path.is_file())
        yield f"download rate: {size / 1e6:.2f} MB of run {run}'s version {pulled.version} in {seconds:.2f}s " \
              f"({size * 8 / 1e6 / max(seconds, 1e-6):.1f} Mbit/s, including verification)"
