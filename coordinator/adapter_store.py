"""The on-disk store of published adapter versions: written atomically, never half.

A version is assembled in a temporary directory beside its final place, fsynced, then renamed into place in
one step; the DB row is added only after the rename. A crash before the rename leaves a ``.partial-*`` folder
that ``AdapterStore`` removes on start; a crash between rename and DB row leaves an unreferenced folder that the
next publish of that number replaces. Served versions are only those with a DB row, so readers never see a
partial version.

Usage::

    store = AdapterStore(Path("~/.nomoat/store"))
    stored = store.put("demo", 3, peft_dir, sign=lambda files: sign_manifest(Manifest(..., files=files), key))
    store.remove("demo", 1)                   # retention: gone in one rename, then deleted
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from swarm.adapter_files import ADAPTER_FILES, FileDigest, describe_files, version_digest
from swarm.log import get_logger
from swarm.manifest import MANIFEST_FILE, SIGNATURE_FILE, SignedManifest
from swarm.private_files import fsync_folder

logger = get_logger(__name__)
PARTIAL_PREFIX = ".partial-"
TRASH_PREFIX = ".trash-"


class StoreError(RuntimeError):
    """The store could not write a version; earlier versions are untouched."""


@dataclass(frozen=True)
class StoredVersion:
    path: Path
    sha256: str
    files: list[FileDigest]


class AdapterStore:
    def __init__(self, root: Path):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(f"*/{PARTIAL_PREFIX}*"):
            logger.warning("removing a partial version left by an interrupted publish: %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.root.glob(f"*/{TRASH_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def version_path(self, run_name: str, version: int) -> Path:
        return self.root / run_name / f"v{version:06d}"

    def put(self, run_name: str, version: int, source: Path,
            sign: Callable[[tuple[FileDigest, ...]], SignedManifest] | None = None) -> StoredVersion:
        """Copy the PEFT adapter in ``source`` into the store as ``version`` of ``run_name``, atomically.

        ``sign`` turns the adapter files' digests into the version's signed manifest, stored beside them in the
        same atomic step (a version is never visible without its manifest)."""
        final = self.version_path(run_name, version)
        partial = final.parent / f"{PARTIAL_PREFIX}{version:06d}-{uuid.uuid4().hex[:8]}"
        try:
            partial.mkdir(parents=True)
            for name in ADAPTER_FILES:
                shutil.copyfile(source / name, partial / name)
                with (partial / name).open("rb+") as handle:
                    os.fsync(handle.fileno())
            files = describe_files(partial)
            if sign is not None:
                sign(tuple(files)).write(partial)
                for name in (MANIFEST_FILE, SIGNATURE_FILE):  # the adapter files are synced above
                    with (partial / name).open("rb+") as handle:
                        os.fsync(handle.fileno())
            fsync_folder(partial)
            if final.exists():  # left by a crash after rename but before its DB row: never served, replace it
                shutil.rmtree(final)
            os.rename(partial, final)
            fsync_folder(final.parent)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise StoreError(f"could not store version {version} of '{run_name}' in {self.root}: {exc}") from None
        return StoredVersion(path=final, sha256=version_digest(files), files=files)

    def remove(self, run_name: str, version: int) -> None:
        """Delete a version's files: renamed aside in one step (readers never see half a folder), then removed."""
        final = self.version_path(run_name, version)
        if not final.exists():
            return
        trash = final.parent / f"{TRASH_PREFIX}{version:06d}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
