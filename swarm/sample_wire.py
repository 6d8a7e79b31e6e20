"""Samples on the wire (``DataChunk`` of StreamDataSlice): plain texts in ``texts``, as before formats existed,
so old workers of plain-text runs read their slices unchanged; rendered instruction/chat samples in ``samples``,
segment by segment with their trainable flags, so the worker masks prompts exactly as the coordinator does.

A worker checks everything a coordinator sends before training on it (``SliceReader``): a hostile or broken
coordinator gets a ``SliceError`` naming what was wrong, never a crash or an unbounded slice.

Usage::

    for chunk in chunks_of(samples): yield chunk               # coordinator
    reader = SliceReader()
    for chunk in stream: reader.add(chunk)                     # worker
    samples = reader.samples()
"""

from __future__ import annotations

from typing import Iterator, Sequence

from nomoat_proto import coordinator_pb2 as pb
from swarm.samples import MAX_SAMPLE_CHARS, MAX_SEGMENTS_PER_SAMPLE, Sample, TrainingSample, segments_of

MAX_SLICE_SAMPLES = 10_000_000
MAX_SLICE_CHARS = 4 * 1024**3
CHUNK_SAMPLES = 256
CHUNK_CHARS = 8 * 1024 * 1024  # with MAX_SAMPLE_CHARS, a chunk stays far below the 64 MiB message limit


class SliceError(ValueError):
    """A data slice from the coordinator is malformed or too large; the message says how."""


def _chunk(samples: Sequence[TrainingSample]) -> pb.DataChunk:
    texts = [sample for sample in samples if isinstance(sample, str)]
    rendered = [pb.FormattedSample(segments=[pb.SampleSegment(text=text, trainable=trainable)
                                             for text, trainable in sample.segments])
                for sample in samples if isinstance(sample, Sample)]
    return pb.DataChunk(texts=texts, samples=rendered)


def chunks_of(samples: Sequence[TrainingSample]) -> Iterator[pb.DataChunk]:
    """``samples`` in chunks of at most CHUNK_SAMPLES samples and about CHUNK_CHARS characters."""
    start, chars = 0, 0
    for index, sample in enumerate(samples):
        chars += sum(len(text) for text, _ in segments_of(sample))
        if index + 1 - start >= CHUNK_SAMPLES or chars >= CHUNK_CHARS:
            yield _chunk(samples[start : index + 1])
            start, chars = index + 1, 0
    if start < len(samples):
        yield _chunk(samples[start:])


class SliceReader:
    """Collects a slice's chunks, checking each sample's shape and the slice's size as they arrive."""

    def __init__(self, max_samples: int = MAX_SLICE_SAMPLES, max_chars: int = MAX_SLICE_CHARS):
        self.max_samples, self.max_chars = max_samples, max_chars
        self._samples: list[TrainingSample] = []
        self._chars = 0

    def _count(self, chars: int) -> None:
        self._chars += chars
        if len(self._samples) >= self.max_samples:
            raise SliceError(f"the coordinator sent more than {self.max_samples} samples")
        if self._chars > self.max_chars:
            raise SliceError(f"the coordinator sent more than {self.max_chars} characters of samples")

    def add(self, chunk: pb.DataChunk) -> None:
        for text in chunk.texts:
            if len(text) > MAX_SAMPLE_CHARS:
                raise SliceError(f"sample {len(self._samples) + 1} holds {len(text)} characters, more than "
                                 f"{MAX_SAMPLE_CHARS}")
            self._count(len(text))
            self._samples.append(text)
        for formatted in chunk.samples:
            number = len(self._samples) + 1
            segments = tuple((segment.text, bool(segment.trainable)) for segment in formatted.segments)
            if not 1 <= len(segments) <= MAX_SEGMENTS_PER_SAMPLE:
                raise SliceError(f"sample {number} has {len(segments)} segments; expected 1 to "
                                 f"{MAX_SEGMENTS_PER_SAMPLE}")
            chars = sum(len(text) for text, _ in segments)
            if chars > MAX_SAMPLE_CHARS:
                raise SliceError(f"sample {number} holds {chars} characters, more than {MAX_SAMPLE_CHARS}")
            if not any(trainable for _, trainable in segments):
                raise SliceError(f"sample {number} has no trainable segment")
            self._count(chars)
            self._samples.append(Sample(segments))

    def samples(self) -> list[TrainingSample]:
        if not self._samples:
            raise SliceError("the coordinator sent an empty data slice")
        return self._samples
