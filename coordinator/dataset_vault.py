"""The coordinator's own copy of every launched dataset, stored by content digest in its data dir.

A run's samples are read once, at launch, and kept here; after that the run never reads the file it was
launched from again, so moving, editing or deleting that file changes nothing (and cannot stop the coordinator
from starting).

Usage::

    vault = DatasetVault(data_dir / "datasets")
    digest = vault.put(texts)            # "sha256:...", the same digest swarm.data.dataset_digest gives
    texts = vault.get(digest)            # DatasetError when missing or not matching its digest
"""

from __future__ import annotations

import json
from pathlib import Path

from swarm.data import DatasetError, dataset_digest
from swarm.log import get_logger
from swarm.private_files import private_folder, write_private_file

logger = get_logger(__name__)


class DatasetVault:
    def __init__(self, root: Path):
        self.root = private_folder(Path(root))

    def path_of(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise DatasetError(f"not a dataset digest: {digest!r}")
        return self.root / f"{hexdigest}.jsonl"

    def has(self, digest: str) -> bool:
        return self.path_of(digest).is_file()

    def put(self, texts: list[str]) -> str:
        """Store ``texts`` and return their digest (written atomically: a crash leaves no partial file)."""
        digest = dataset_digest(texts)
        target = self.path_of(digest)
        if target.is_file():
            return digest
        lines = "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts)
        write_private_file(target, lines.encode("utf-8"))
        logger.info("stored dataset %s (%d samples)", digest, len(texts))
        return digest

    def get(self, digest: str) -> list[str]:
        """The samples stored under ``digest``, checked against it."""
        path = self.path_of(digest)
        try:
            with path.open(encoding="utf-8") as lines:
                texts = [json.loads(line)["text"] for line in lines if line.strip()]
        except FileNotFoundError:
            raise DatasetError(f"dataset {digest} is not in the coordinator's dataset store ({self.root})") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"stored dataset {path} is unreadable: {exc}") from None
        if dataset_digest(texts) != digest:
            raise DatasetError(f"stored dataset {path} does not match its digest {digest}: the file was altered")
        return texts
