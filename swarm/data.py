"""Datasets: the built-in sample dataset, local JSONL/text files, the train/eval split, worker slices, batching.

Samples are plain texts (``str``, trained on in full) or rendered instruction/chat samples
(``swarm.samples.Sample``, whose prompt segments get IGNORE_INDEX labels); the coordinator reads and renders
files of every format with ``swarm.training_data``.

Usage::

    texts = load_texts("sample")
    split = split_dataset(texts, eval_fraction=0.1, seed=0)
    mine = data_slice(split.train, slices=4, index=1)
    for epoch, input_ids, labels in iterate_batches(mine, tokenizer, seq_len=64, batch_size=4, seed=0): ...
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import torch

from swarm.dataset_files import DatasetError
from swarm.samples import TrainingSample, dataset_digest, segments_of
from swarm.tokenizer import TextTokenizer

__all__ = ["DatasetError", "dataset_digest", "IGNORE_INDEX", "SAMPLE_DATASET", "DatasetSplit", "load_texts",
           "split_dataset", "data_slice", "encode_sample", "encode_batch", "pack_samples", "iterate_batches"]

SAMPLE_DATASET = "sample"
IGNORE_INDEX = -100

_NAMES = ["ada", "bob", "cleo", "dan", "eve", "finn", "gus", "hana", "ivo", "june"]
_THINGS = ["apple", "book", "coin", "drum", "egg", "fig", "gem", "hat", "kite", "lamp"]


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


@dataclass(frozen=True)
class DatasetSplit:
    train: list[TrainingSample]
    eval: list[TrainingSample]


S = TypeVar("S")


def split_dataset(texts: Sequence[TrainingSample], eval_fraction: float, seed: int) -> DatasetSplit:
    """A deterministic shuffle, then the last ``eval_fraction`` (at least one sample) is held out."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    eval_count = max(1, int(round(len(texts) * eval_fraction)))
    eval_count = min(eval_count, len(texts) - 1)
    cut = len(texts) - eval_count
    return DatasetSplit(train=[texts[i] for i in order[:cut]], eval=[texts[i] for i in order[cut:]])


def data_slice(train: list[S], slices: int, index: int) -> list[S]:
    """Slice ``index`` of ``slices``: every slices-th sample, so slices are disjoint and cover the train split."""
    if not 0 <= index < slices:
        raise DatasetError(f"data slice {index} is outside 0..{slices - 1}")
    return train[index::slices] or train


def encode_sample(sample: TrainingSample, tokenizer: TextTokenizer) -> tuple[list[int], list[int]]:
    """(ids, labels) of BOS + tokens + EOS, uncut. A plain text is trained on in full (its BOS label is BOS, as it
    always was; no position predicts it); a rendered sample's prompt tokens, its BOS and, after a prompt, its EOS
    get IGNORE_INDEX. Segments are tokenized one by one, so no token spans a prompt/answer boundary."""
    ids, labels = [tokenizer.bos_token_id], [tokenizer.bos_token_id if isinstance(sample, str) else IGNORE_INDEX]
    trainable = True
    for text, trainable in segments_of(sample):
        tokens = tokenizer.encode(text)
        ids += tokens
        labels += tokens if trainable else [IGNORE_INDEX] * len(tokens)
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id if trainable else IGNORE_INDEX)
    return ids, labels


def _rows(encoded: list[tuple[list[int], list[int]]], tokenizer: TextTokenizer,
          seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.full((len(encoded), seq_len), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(encoded), seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, targets) in enumerate(encoded):
        ids, targets = ids[:seq_len], targets[:seq_len]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(targets)] = torch.tensor(targets, dtype=torch.long)
    return input_ids, labels


def encode_batch(texts: Sequence[TrainingSample], tokenizer: TextTokenizer,
                 seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per sample: BOS + tokens + EOS, cut or padded to ``seq_len``; labels ignore padding and prompts."""
    return _rows([encode_sample(sample, tokenizer) for sample in texts], tokenizer, seq_len)


def pack_samples(encoded: Iterator[tuple[list[int], list[int]]],
                 seq_len: int) -> Iterator[tuple[list[int], list[int]]]:
    """Consecutive encoded samples concatenated into rows of at most ``seq_len`` tokens (a sample that does not fit
    starts the next row; one longer than ``seq_len`` is cut and fills a row alone). Packed samples attend to the
    ones before them in their row, as in most packed fine-tuning; the masks stay per token."""
    row_ids: list[int] = []
    row_labels: list[int] = []
    for ids, labels in encoded:
        if row_ids and len(row_ids) + len(ids) > seq_len:
            yield row_ids, row_labels
            row_ids, row_labels = [], []
        row_ids, row_labels = row_ids + ids[:seq_len], row_labels + labels[:seq_len]
    if row_ids:
        yield row_ids, row_labels


def iterate_batches(
    texts: Sequence[TrainingSample], tokenizer: TextTokenizer, seq_len: int, batch_size: int, seed: int,
    packing: bool = False,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Endless (epoch, input_ids, labels) batches over ``texts``, reshuffled every pass. With ``packing``, each
    row holds as many whole shuffled samples as fit in ``seq_len`` (and a batch is ``batch_size`` such rows)."""
    if packing:
        yield from _packed_batches(texts, tokenizer, seq_len, batch_size, seed)
        return
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


def _packed_batches(texts: Sequence[TrainingSample], tokenizer: TextTokenizer, seq_len: int, batch_size: int,
                    seed: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    if not texts:
        raise DatasetError("no samples to pack")
    rng = random.Random(seed)
    encoded = [encode_sample(sample, tokenizer) for sample in texts]
    epoch = 0
    rows: list[tuple[list[int], list[int]]] = []
    while True:  # rows carry over between passes, so every batch is full
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for row in pack_samples((encoded[i] for i in order), seq_len):
            rows.append(row)
            if len(rows) == batch_size:
                yield (epoch, *_rows(rows, tokenizer, seq_len))
                rows = []
        epoch += 1
