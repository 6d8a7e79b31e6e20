"""The files of a published adapter version and how they are hashed: shared by the coordinator's store and the
pull client, so both compute the same digests.

A version directory holds a stock PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``); its
digest is the sha256 of its manifest lines ``<name> <size> <sha256>`` in name order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileDigest:
    name: str
    size: int
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def describe_files(directory: Path, names: tuple[str, ...] = ADAPTER_FILES) -> list[FileDigest]:
    return [FileDigest(name, (directory / name).stat().st_size, file_sha256(directory / name)) for name in sorted(names)]


def version_digest(files: list[FileDigest]) -> str:
    lines = "".join(f"{entry.name} {entry.size} {entry.sha256}\n" for entry in sorted(files, key=lambda f: f.name))
    return hashlib.sha256(lines.encode()).hexdigest()
