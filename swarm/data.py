"""Datasets: the built-in sample dataset, local JSONL/text files, the train/eval split, worker slices, batching.

Usage::

    texts = load_texts("sample")
    split = split_dataset(texts, eval_fraction=0.1, seed=0)
    mine = data_slice(split.train, slices=4, index=1)
    for input_ids, labels in iterate_batches(mine, tokenizer, seq_len=64, batch_size=4, seed=0): ...
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from swarm.tokenizer import TextTokenizer

SAMPLE_DATASET = "sample"
IGNORE_INDEX = -100

_NAMES = ["ada", "bob", "cleo", "dan", "eve", "finn", "gus", "hana", "ivo", "june"]
_THINGS = ["apple", "book", "coin", "drum", "egg", "fig", "gem", "hat", "kite", "lamp"]


class DatasetError(ValueError):
    """The dataset is missing, empty or malformed; the message names the file and line."""


def generate_sample_dataset(size: int = 2000, seed: int = 7) -> list[str]:
    """Short, regular English-like stories with counting: structure a tiny model learns in a few hundred steps."""
    rng = random.Random(seed)
    texts = []
    for _ in range(size):
        giver, taker = rng.sample(_NAMES, 2)
        thing = rng.choice(_THINGS)
        have = rng.randint(2, 9)
        give = rng.randint(1, have - 1)
        texts.append(
            f"{giver} has {have} {thing}s. {giver} gives {give} {thing}s to {taker}. "
            f"now {giver} has {have - give} {thing}s."
        )
    return texts


def load_texts(dataset: str) -> list[str]:
    """Read the samples of ``dataset``: 'sample', a .jsonl file of {"text": ...} objects, or a .txt file."""
    if dataset == SAMPLE_DATASET:
        return generate_sample_dataset()
    path = Path(dataset).expanduser()
    if not path.is_file():
        raise DatasetError(f"dataset '{dataset}' is not '{SAMPLE_DATASET}' and no such file exists")
    if path.suffix == ".jsonl":
        texts = _read_jsonl(path)
    elif path.suffix == ".txt":
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise DatasetError(f"dataset file must be .jsonl or .txt, not '{path.suffix or 'no suffix'}': {path}")
    if len(texts) < 2:
        raise DatasetError(f"dataset {path} holds {len(texts)} samples; at least 2 are needed (train and eval)")
    return texts


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DatasetError(f"{path}:{number}: each line must be an object with a string field 'text'")
            if record["text"].strip():
                texts.append(record["text"])
    return texts


def dataset_digest(texts: list[str]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class DatasetSplit:
    train: list[str]
    eval: list[str]


def split_dataset(texts: list[str], eval_fraction: float, seed: int) -> DatasetSplit:
    """A deterministic shuffle, then the last ``eval_fraction`` (at least one sample) is held out."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    eval_count = max(1, int(round(len(texts) * eval_fraction)))
    eval_count = min(eval_count, len(texts) - 1)
    cut = len(texts) - eval_count
    return DatasetSplit(train=[texts[i] for i in order[:cut]], eval=[texts[i] for i in order[cut:]])


def data_slice(train: list[str], slices: int, index: int) -> list[str]:
    """Slice ``index`` of ``slices``: every slices-th sample, so slices are disjoint and cover the train split."""
    if not 0 <= index < slices:
        raise DatasetError(f"data slice {index} is outside 0..{slices - 1}")
    return train[index::slices] or train


def encode_batch(texts: list[str], tokenizer: TextTokenizer, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS + tokens + EOS, cut or padded to ``seq_len``; labels ignore padding."""
    input_ids = torch.full((len(texts), seq_len), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(texts), seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = ([tokenizer.bos_token_id] + tokenizer.encode(text) + [tokenizer.eos_token_id])[:seq_len]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(ids)
    return input_ids, labels


def iterate_batches(
    texts: list[str], tokenizer: TextTokenizer, seq_len: int, batch_size: int, seed: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Endless (epoch, input_ids, labels) batches over ``texts``, reshuffled every pass."""
    rng = random.Random(seed)
    epoch = 0
    while True:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            chosen = [texts[i] for i in order[start : start + batch_size]]
            while len(chosen) < batch_size:  # a slice smaller than one batch repeats itself
                chosen.append(texts[order[len(chosen) % len(order)]])
            yield (epoch, *encode_batch(chosen, tokenizer, seq_len))
        epoch += 1
