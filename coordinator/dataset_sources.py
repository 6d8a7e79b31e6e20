"""Where a launched run's dataset may come from: the built-in ``sample``, or a file inside one of the dataset
folders the operator configured (``swarm coordinator --dataset-dir DIR``). The dataset named in a RunSpec arrives
over the network, so it is never opened as a path of its own: it is resolved inside those folders (symbolic links
and ``..`` cannot leave them), and a name that does not resolve to a file there gets one answer whether or not
such a path exists elsewhere on the host.

Usage::

    sources = DatasetSources([Path("/srv/nomoat/datasets")])
    texts = sources.load("alpaca-mini.jsonl")     # DatasetError with a message that reveals nothing outside
"""

from __future__ import annotations

from pathlib import Path

from swarm.data import SAMPLE_DATASET, DatasetError, load_texts


class DatasetSources:
    def __init__(self, folders: list[Path] | tuple[Path, ...] = ()):
        self.folders = tuple(Path(folder).expanduser().resolve() for folder in folders)

    def resolve(self, dataset: str) -> str:
        """The dataset to load: ``sample`` or the real path of a file inside a configured folder."""
        if dataset == SAMPLE_DATASET:
            return dataset
        for folder in self.folders:
            candidate = (folder / dataset).resolve()  # an absolute name replaces folder; resolve() follows links
            if candidate.is_relative_to(folder) and candidate.is_file():
                return str(candidate)
        if not self.folders:
            raise DatasetError(f"dataset '{dataset}' is not '{SAMPLE_DATASET}', and this coordinator has no dataset "
                               f"folders (the operator adds them with --dataset-dir)")
        raise DatasetError(f"dataset '{dataset}' is not '{SAMPLE_DATASET}' and not a file in this coordinator's "
                           f"dataset folders")

    def load(self, dataset: str) -> list[str]:
        return load_texts(self.resolve(dataset))
