"""The coordinator's own copy of every launched dataset, stored by content digest in its data dir.

A run's samples are read once, at launch, and kept here; after that the run never reads the file it was
launched from again, so moving, editing or deleting that file changes nothing (and cannot stop the coordinator
from starting).

Usage::

    vault = DatasetVault(data_dir / "datasets")
    digest = vault.put(texts)            # "sha256:...", the same digest swarm.data.dataset_digest gives
    texts = vault.get(digest)            # DatasetError when missing or not matching its digest
    digest = vault.put(samples, formatting)   # rendered instruction/chat samples, digested with their formatting

A plain-text dataset is stored as ``{"text": ...}`` lines, as it always was; a rendered one as a first line
``{"formatting": {...}}`` and then one ``{"segments": [[text, trainable], ...]}`` line per sample.
"""

from __future__ import annotations

import json
from pathlib import Path

from typing import Sequence

from swarm.data import DatasetError, dataset_digest
from swarm.samples import PLAIN_TEXT, Formatting, Sample, TrainingSample, segments_of
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

    def put(self, texts: Sequence[TrainingSample], formatting: Formatting = PLAIN_TEXT) -> str:
        """Store ``texts`` and return their digest (written atomically: a crash leaves no partial file)."""
        digest = dataset_digest(texts, formatting)
        target = self.path_of(digest)
        if target.is_file():
            return digest
        if formatting.plain and all(isinstance(text, str) for text in texts):
            records: list[dict] = [{"text": text} for text in texts]
        else:
            records = [{"formatting": formatting.to_dict()}]
            records += [{"segments": [list(segment) for segment in segments_of(text)]} for text in texts]
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        write_private_file(target, lines.encode("utf-8"))
        logger.info("stored dataset %s (%d samples)", digest, len(texts))
        return digest

    def get(self, digest: str) -> list[TrainingSample]:
        """The samples stored under ``digest``, checked against it."""
        path = self.path_of(digest)
        try:
            with path.open(encoding="utf-8") as lines:
                records = [json.loads(line) for line in lines if line.strip()]
            formatting = PLAIN_TEXT
            if records and "formatting" in records[0]:
                formatting = Formatting.from_dict(records.pop(0)["formatting"])
                texts: list[TrainingSample] = [
                    Sample(tuple((str(text), bool(trainable)) for text, trainable in record["segments"]))
                    for record in records]
            else:
                texts = [record["text"] for record in records]
        except FileNotFoundError:
            raise DatasetError(f"dataset {digest} is not in the coordinator's dataset store ({self.root})") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"stored dataset {path} is unreadable: {exc}") from None
        if dataset_digest(texts, formatting) != digest:
            raise DatasetError(f"stored dataset {path} does not match its digest {digest}: the file was altered")
        return texts
