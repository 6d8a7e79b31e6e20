"""Pull a published adapter version from a coordinator into a stock PEFT adapter directory.

Every file is streamed in chunks, checked against the header's size and sha256, and the whole version against
the digest the coordinator recorded at publish time; only then is the directory moved into place, so ``out``
never holds a partial or tampered adapter.

Usage::

    from swarm.pull import pull
    info = pull("127.0.0.1:50051", "demo", out=Path("adapter"))       # latest version
    model = peft.PeftModel.from_pretrained(base_model, "adapter")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from swarm.adapter_files import FileDigest, version_digest
from swarm.client import CoordinatorClient

VERSION_INFO_FILE = "nomoat_version.json"


class PullError(RuntimeError):
    """The download was incomplete or did not match its hashes; nothing was written to the output folder."""


@dataclass(frozen=True)
class PulledVersion:
    run_name: str
    version: int
    sha256: str
    eval_loss: float
    base_eval_loss: float
    path: Path


def pull(coordinator: str, run_name: str, out: Path, version: int = 0, show_progress: bool = False) -> PulledVersion:
    """Download ``version`` (0: latest) of ``run_name`` into ``out`` (created or replaced) and verify it."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=out.parent))
    try:
        with CoordinatorClient(coordinator) as client:
            info = _receive(client.pull_stream(run_name, version), staging, show_progress)
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PulledVersion(info.run_name, info.version, info.sha256, info.eval_loss, info.base_eval_loss, out)


def _receive(stream, staging: Path, show_progress: bool):
    header = None
    expected: dict[str, FileDigest] = {}
    hashers: dict[str, hashlib._Hash] = {}
    sizes: dict[str, int] = {}
    handles = {}
    progress = None
    try:
        for message in stream:
            if message.HasField("header"):
                header = message.header
                expected = {f.name: FileDigest(f.name, f.size, f.sha256) for f in header.files}
                for name in expected:
                    if "/" in name or name.startswith("."):
                        raise PullError(f"coordinator sent an unsafe file name: {name!r}")
                    handles[name] = (staging / name).open("wb")
                    hashers[name], sizes[name] = hashlib.sha256(), 0
                progress = tqdm(total=sum(f.size for f in expected.values()), unit="B", unit_scale=True,
                                desc=f"{header.version.run_name} v{header.version.version}", disable=not show_progress)
                continue
            chunk = message.chunk
            if header is None or chunk.name not in handles:
                raise PullError(f"unexpected chunk for {chunk.name!r} before or outside the header's file list")
            if chunk.offset != sizes[chunk.name]:
                raise PullError(f"{chunk.name}: chunk at offset {chunk.offset}, expected {sizes[chunk.name]}")
            handles[chunk.name].write(chunk.data)
            hashers[chunk.name].update(chunk.data)
            sizes[chunk.name] += len(chunk.data)
            progress.update(len(chunk.data))
    finally:
        for handle in handles.values():
            handle.close()
        if progress is not None:
            progress.close()
    if header is None:
        raise PullError("coordinator sent no version header")
    received = []
    for name, entry in expected.items():
        if sizes[name] != entry.size:
            raise PullError(f"{name}: received {sizes[name]} bytes, expected {entry.size}")
        received.append(FileDigest(name, sizes[name], hashers[name].hexdigest()))
    digest = version_digest(received)
    if digest != header.version.sha256:
        raise PullError(
            f"version {header.version.version} of '{header.version.run_name}' failed verification: the files hash to "
            f"{digest}, but the coordinator published {header.version.sha256} (corrupted or tampered files)"
        )
    info = header.version
    (staging / VERSION_INFO_FILE).write_text(json.dumps({
        "run": info.run_name, "version": info.version, "sha256": info.sha256, "epoch": info.epoch,
        "samples": info.samples, "eval_loss": info.eval_loss, "base_eval_loss": info.base_eval_loss,
        "contributors": list(info.contributors), "created_at": info.created_at,
    }, indent=2))
    return info
