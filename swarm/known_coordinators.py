"""What a puller remembers about coordinators between pulls, in its config folder (``swarm.paths.UserDirs``):

- ``known_coordinators.json``: address -> the peer ID of the key that signed there first (trust on first use,
  like ssh's known_hosts). A key is recorded only once a manifest signed by it verified completely: signature,
  fields and every file; so a tampered first contact pins nothing.
- ``seen_versions.json``: signer peer ID -> run -> the highest version number verified from it, so a server (or
  a proxy in between) that offers an older version as "latest" is caught: versions only grow.

Both files are written atomically with mode 0600 (``swarm.private_files``).

Usage::

    memory = CoordinatorMemory(dirs.known_coordinators, dirs.seen_versions)
    memory.signer_for("host:50051")        # None before the first verified pull
    memory.remember("host:50051", manifest)    # after it verified: pins the signer, raises the version seen
    memory.highest_version(signer, "demo")     # 0 when never seen
"""

from __future__ import annotations

import json
from pathlib import Path

from swarm.manifest import Manifest
from swarm.private_files import write_private_file


class CoordinatorMemoryError(RuntimeError):
    """A memory file that cannot be read or written."""


class CoordinatorMemory:
    """The two files above; reads them afresh on every call, so concurrent pulls see each other's updates."""

    def __init__(self, known_file: Path, versions_file: Path):
        self.known_file, self.versions_file = Path(known_file), Path(versions_file)

    def signer_for(self, address: str) -> str | None:
        signer = _read(self.known_file).get(address)
        return signer if isinstance(signer, str) else None

    def highest_version(self, signer: str, run: str) -> int:
        runs = _read(self.versions_file).get(signer)
        number = runs.get(run) if isinstance(runs, dict) else None
        return number if isinstance(number, int) and not isinstance(number, bool) else 0

    def remember(self, address: str, manifest: Manifest) -> None:
        """Record a completely verified manifest: its signer for ``address`` (unless one is pinned there
        already) and its version as seen, if higher than any seen before."""
        known = _read(self.known_file)
        if address not in known:
            known[address] = manifest.coordinator
            _write(self.known_file, known)
        if manifest.version > self.highest_version(manifest.coordinator, manifest.run):
            seen = _read(self.versions_file)
            runs = seen.get(manifest.coordinator)
            runs = runs if isinstance(runs, dict) else {}
            runs[manifest.run] = manifest.version
            seen[manifest.coordinator] = runs
            _write(self.versions_file, seen)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise CoordinatorMemoryError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CoordinatorMemoryError(f"{path} does not hold a JSON object; move it aside to start afresh")
    return data


def _write(path: Path, data: dict) -> None:
    try:
        write_private_file(path, json.dumps(data, indent=2, sort_keys=True).encode())
    except OSError as exc:
        raise CoordinatorMemoryError(f"cannot write {path}: {exc}") from None
