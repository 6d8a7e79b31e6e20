"""What one training sample is, and the digest that pins a run's samples and how they are formatted.

A plain-text sample is a ``str``: every token of it is trained on (runs launched before instruction and chat data
existed hold only these). An instruction or chat sample is a ``Sample``: the rendered text cut into segments,
each marked trainable (the responses) or not (the prompts, whose tokens get IGNORE_INDEX labels).

Usage::

    sample = Sample((("<|user|>\\nhi<|end|>\\n<|assistant|>\\n", False), ("hello<|end|>\\n", True)))
    digest = dataset_digest([sample], Formatting("chat", "nomoat-default-v1", train_on_prompts=False,
                                                 packing=False))
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Sequence, Union

# Bounds on what a data slice may hold, for the coordinator that serves it and the worker that receives it.
MAX_SEGMENTS_PER_SAMPLE = 4096
MAX_SAMPLE_CHARS = 1024 * 1024  # the coordinator refuses longer ones at launch


@dataclass(frozen=True)
class Sample:
    """One rendered sample: ``segments`` of (text, trainable), in order; at least one is trainable."""

    segments: tuple[tuple[str, bool], ...]

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


TrainingSample = Union[str, Sample]  # str: a plain-text sample, trained on in full


def segments_of(sample: TrainingSample) -> tuple[tuple[str, bool], ...]:
    return ((sample, True),) if isinstance(sample, str) else sample.segments


@dataclass(frozen=True)
class Formatting:
    """How a run's rows became samples: the digest covers it, so two coordinators that format the same rows
    differently (another template, masking or packing) do not agree on what the run trains."""

    data_format: str  # text | instruction | chat (what 'auto' resolved to)
    template: str  # 'none' for text, 'nomoat-default-v1', or 'hf:sha256:...' of the tokenizer's chat template
    train_on_prompts: bool
    packing: bool

    @property
    def plain(self) -> bool:
        """Plain text without packing: digested exactly as before formats existed, so old runs keep theirs."""
        return self.data_format == "text" and not self.packing

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "Formatting":
        return cls(str(fields["data_format"]), str(fields["template"]), bool(fields["train_on_prompts"]),
                   bool(fields["packing"]))


PLAIN_TEXT = Formatting("text", "none", train_on_prompts=False, packing=False)


def dataset_digest(samples: Sequence[TrainingSample], formatting: Formatting = PLAIN_TEXT) -> str:
    """sha256 of the samples (and, unless plain text, of their formatting): what a run trains, exactly."""
    if formatting.plain and all(isinstance(sample, str) for sample in samples):
        payload: object = list(samples)
    else:
        payload = {"formatting": formatting.to_dict(),
                   "samples": [[[text, trainable] for text, trainable in segments_of(s)] for s in samples]}
    return "sha256:" + hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()
