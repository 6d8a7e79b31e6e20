"""Where a launched run's dataset may come from: the built-in ``sample``, a file inside one of the dataset
folders the operator configured (``swarm coordinator --dataset-dir DIR``), or, only where the operator allows it
(``--allow-hub-datasets``), a Hugging Face Hub dataset named ``hub:ORG/NAME[:SPLIT][@REVISION]``. The dataset
named in a RunSpec arrives over the network, so it is never opened as a path of its own: it is resolved inside
those folders (symbolic links and ``..`` cannot leave them), and a name that does not resolve to a file there gets
one answer whether or not such a path exists elsewhere on the host. A name starting with ``hub:`` always means
the Hub, never a file.

Usage::

    sources = DatasetSources([Path("/srv/nomoat/datasets")])
    parsed = sources.parse("alpaca-mini.jsonl", "auto")   # rows checked: swarm.training_data.ParsedDataset
    texts = sources.load("stories.txt")                   # plain texts; DatasetError reveals nothing outside
"""

from __future__ import annotations

from pathlib import Path

from swarm.data import SAMPLE_DATASET, DatasetError, generate_sample_dataset
from swarm.dataset_files import is_hub_name, parse_hub_dataset, read_hub_rows, read_rows
from swarm.training_data import ParsedDataset, parse_dataset, text_dataset


class DatasetSources:
    def __init__(self, folders: list[Path] | tuple[Path, ...] = (), allow_hub: bool = False):
        self.folders = tuple(Path(folder).expanduser().resolve() for folder in folders)
        self.allow_hub = allow_hub

    def resolve(self, dataset: str) -> str:
        """The dataset to load: ``sample``, a checked ``hub:`` id (where allowed) or the real path of a file inside
        a configured folder."""
        if dataset == SAMPLE_DATASET:
            return dataset
        if is_hub_name(dataset):
            hub = parse_hub_dataset(dataset)
            if not self.allow_hub:
                raise DatasetError(f"dataset '{dataset}' is on the Hugging Face Hub, and this coordinator does not "
                                   f"load Hub datasets (the operator allows them with --allow-hub-datasets)")
            return str(hub)
        for folder in self.folders:
            candidate = (folder / dataset).resolve()  # an absolute name replaces folder; resolve() follows links
            if candidate.is_relative_to(folder) and candidate.is_file():
                return str(candidate)
        if not self.folders:
            raise DatasetError(f"dataset '{dataset}' is not '{SAMPLE_DATASET}', and this coordinator has no dataset "
                               f"folders (the operator adds them with --dataset-dir)")
        raise DatasetError(f"dataset '{dataset}' is not '{SAMPLE_DATASET}' and not a file in this coordinator's "
                           f"dataset folders")

    def parse(self, dataset: str, data_format: str = "auto") -> ParsedDataset:
        """The dataset's rows, read (local files and Hub splits through ``datasets``) and checked as
        ``data_format``; errors name the file by its name within the folder, row and field."""
        resolved = self.resolve(dataset)
        if resolved == SAMPLE_DATASET:
            return text_dataset(generate_sample_dataset())
        if is_hub_name(resolved):
            return parse_dataset(read_hub_rows(parse_hub_dataset(resolved)), resolved, data_format)
        return parse_dataset(read_rows(Path(resolved)), Path(resolved).name, data_format)

    def load(self, dataset: str) -> list[str]:
        """The samples of a plain-text dataset."""
        return [str(record) for record in self.parse(dataset, "text").records]
