"""A run's samples from its dataset's rows, in two steps: ``parse_dataset`` checks the rows against the run's
``data_format`` (no model needed, so bad data is refused before a base model loads), ``render_dataset`` turns
them into samples with the base tokenizer's chat template and records how (``swarm.samples.Formatting``, part
of the dataset digest).

Usage::

    parsed = parse_dataset(read_rows(path), path.name, spec.data_format)
    samples, formatting = render_dataset(parsed, tokenizer, spec.train_on_prompts, spec.packing)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swarm.chat_template import render_conversation, template_name
from swarm.data import IGNORE_INDEX, encode_sample
from swarm.dataset_files import DatasetError
from swarm.formats import Record, parse_rows
from swarm.samples import MAX_SAMPLE_CHARS, Formatting, TrainingSample, segments_of


@dataclass(frozen=True)
class ParsedDataset:
    source: str  # the file (or Hub id) the rows came from, for messages
    data_format: str  # text | instruction | chat
    records: list[Record]  # texts, or conversations


def parse_dataset(rows: list[dict[str, Any]], source: str, data_format: str) -> ParsedDataset:
    resolved, records = parse_rows(rows, data_format, source)
    return ParsedDataset(source, resolved, records)


def text_dataset(texts: list[str], source: str = "sample") -> ParsedDataset:
    return ParsedDataset(source, "text", list(texts))


def render_dataset(parsed: ParsedDataset, tokenizer: Any, train_on_prompts: bool,
                   packing: bool) -> tuple[list[TrainingSample], Formatting]:
    """(samples, how they were formatted); DatasetError for a sample longer than a worker accepts."""
    if parsed.data_format == "text":  # every token is trained on: nothing to mask
        samples: list[TrainingSample] = [str(record) for record in parsed.records]
        formatting = Formatting("text", "none", False, packing)
    else:
        samples = [render_conversation(record, tokenizer, train_on_prompts,
                                       where=f"{parsed.source} row {number}")
                   for number, record in enumerate(parsed.records, start=1) if not isinstance(record, str)]
        formatting = Formatting(parsed.data_format, template_name(tokenizer), train_on_prompts, packing)
    for number, sample in enumerate(samples, start=1):
        chars = sum(len(text) for text, _ in segments_of(sample))
        if chars > MAX_SAMPLE_CHARS:
            raise DatasetError(f"{parsed.source} sample {number}: {chars} characters once rendered, more than "
                               f"{MAX_SAMPLE_CHARS}")
    return samples, formatting


def answers_cut_away(samples: list[TrainingSample], tokenizer: Any, seq_len: int) -> int:
    """How many rendered samples keep no trainable token within ``seq_len`` (their prompt fills it)."""
    cut = 0
    for sample in samples:
        if not isinstance(sample, str):
            labels = encode_sample(sample, tokenizer)[1][1:seq_len]
            cut += all(label == IGNORE_INDEX for label in labels)
    return cut
