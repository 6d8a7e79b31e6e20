"""Rows of a dataset, read through Hugging Face ``datasets``: a local .jsonl/.json/.parquet/.csv file, or a Hub
dataset named ``hub:ORG/NAME[:SPLIT][@REVISION]`` (only where the caller allows the Hub). A ``.txt`` file is one
``{"text": line}`` row per non-empty line. Rows come back as plain dicts, in file order.

``datasets`` prepares every load in a cache folder; each load here gets a fresh temporary one, removed after it,
so a file edited between two launches is read afresh and nothing accumulates.

Usage::

    rows = read_rows(Path("/srv/datasets/alpaca.jsonl"))       # DatasetError naming the file on bad input
    hub = parse_hub_dataset("hub:tatsu-lab/alpaca:train[:2000]@main")
    rows = read_hub_rows(hub)                                  # downloads: only where the operator allows it
"""

from __future__ import annotations

import csv
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm.log import get_logger

logger = get_logger(__name__)

HUB_PREFIX = "hub:"
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FILE_SUFFIXES = (*BUILDERS, ".txt")
_HUB_PATTERN = re.compile(
    r"hub:(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})"
    r"(?::(?P<split>[A-Za-z0-9_]{1,64}(?:\[[0-9:%-]{0,32}\])?))?"
    r"(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9_./-]{0,127}))?"
)


class DatasetError(ValueError):
    """The dataset is missing, empty or malformed; the message names the file, row and field."""


@dataclass(frozen=True)
class HubDataset:
    repo: str  # ORG/NAME
    split: str = "train"  # may slice: 'train[:1000]'
    revision: str | None = None  # a branch, tag or commit; None: the default branch

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo}:{self.split}" + (f"@{self.revision}" if self.revision else "")


def is_hub_name(dataset: str) -> bool:
    return dataset.startswith(HUB_PREFIX)


def parse_hub_dataset(dataset: str) -> HubDataset:
    """``hub:ORG/NAME[:SPLIT][@REVISION]`` -> HubDataset; DatasetError when it is not of that form."""
    match = _HUB_PATTERN.fullmatch(dataset)
    if not match or ".." in match.group("repo"):
        raise DatasetError(f"'{dataset}' is not a Hub dataset id of the form hub:ORG/NAME[:SPLIT][@REVISION] "
                           f"(e.g. hub:tatsu-lab/alpaca:train[:2000]@main)")
    return HubDataset(match.group("repo"), match.group("split") or "train", match.group("revision"))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a local dataset file, as dicts."""
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [{"text": line.strip()} for line in lines if line.strip()]
    builder = BUILDERS.get(path.suffix)
    if builder is None:
        raise DatasetError(f"{path.name}: a dataset file must be {', '.join(FILE_SUFFIXES)}, "
                           f"not '{path.suffix or 'no suffix'}'")
    options: dict[str, Any] = {}
    if builder == "csv":
        options = _csv_as_strings(path)
    return _load(path.name, builder, data_files=str(path), split="train", **options)


def _csv_as_strings(path: Path) -> dict[str, Any]:
    """CSV cells read as the text they are: pandas would make '1' an int and an empty cell NaN."""
    import datasets

    with path.open(encoding="utf-8", newline="") as file:
        header = next(csv.reader(file), [])
    if not header or len(set(header)) != len(header):
        raise DatasetError(f"{path.name}: a CSV dataset needs a header row of distinct column names")
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "keep_default_na": False}


def read_hub_rows(hub: HubDataset) -> list[dict[str, Any]]:
    """Every row of a split of a Hub dataset (downloads it)."""
    return _load(str(hub), hub.repo, split=hub.split, revision=hub.revision)


def _load(name: str, path: str, **options: Any) -> list[dict[str, Any]]:
    import datasets  # heavy (pyarrow, pandas): only when a dataset is read

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="nomoat-datasets-") as cache:
        try:
            table = datasets.load_dataset(path, cache_dir=cache, keep_in_memory=True, **options)
            rows = table.to_list()
        except Exception as exc:  # datasets and pyarrow raise many types for a malformed file: all are bad input
            cause = exc.__cause__ or exc
            raise DatasetError(f"{name}: cannot be read as a dataset ({type(cause).__name__}: "
                               f"{' '.join(str(cause).split())[:300]})") from None
    logger.info("read %d rows from %s", len(rows), name)
    return rows
