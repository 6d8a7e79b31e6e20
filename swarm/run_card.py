"""The model card's account of the run behind a version: who trained it (display names beside peer IDs) and
how (the RunSpec's hyperparameters), both from the version's signed manifest (``swarm.export`` writes the card).

Display names are what volunteers chose (``swarm donate --name``): they are cleaned of control characters and
markdown before they reach the card, and the peer ID stays the contributor's identity.

Usage::

    lines = [*contributor_lines(manifest), "", *hyperparameter_lines(manifest)]
"""

from __future__ import annotations

import re

from swarm.manifest import Manifest
from swarm.spec import RunSpec, SpecError
from swarm.text import one_line

_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~])")
NAME_LIMIT = 64


def markdown_text(text: str, limit: int = NAME_LIMIT) -> str:
    """A stranger's text as inert markdown: one line, no control characters, every markdown character escaped."""
    return _MARKDOWN.sub(r"\\\1", one_line(text, limit))


def _code(value: object) -> str:
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def contributor_lines(manifest: Manifest) -> list[str]:
    """The card's "Contributors" section: one line per contributor, its display name (if it gave one) and peer ID."""
    lines = ["## Contributors", "", "Who trained this version since the previous one (display names are the ones "
             "contributors chose; the peer ID is the identity their work was verified under):", ""]
    for index, peer in enumerate(manifest.contributors):
        name = markdown_text(manifest.display_name(index))
        lines.append(f"- {name} ({_code(peer)})" if name else f"- {_code(peer)}")
    return lines if manifest.contributors else [*lines, "- none recorded"]


def hyperparameter_lines(manifest: Manifest) -> list[str]:
    """The card's "Training hyperparameters" section, from the run's spec in the manifest (a note when the
    manifest carries none: published before specs travelled with versions)."""
    lines = ["## Training hyperparameters", ""]
    if not manifest.spec_json:
        return [*lines, f"Not recorded in this version's manifest; the run's spec hash is {_code(manifest.spec_hash)}."]
    try:
        spec = RunSpec.from_json(manifest.spec_json)
    except (SpecError, ValueError) as exc:
        return [*lines, f"The manifest's spec could not be read by this nomoat ({one_line(str(exc), 200)}):", "",
                "```json", manifest.spec_json, "```"]
    lora, averaging = spec.lora, spec.averaging
    rows = [
        ("Base model", _code(spec.base_model)),
        ("Dataset", _code(spec.dataset)),
        ("Optimizer", f"{spec.optimizer}, learning rate {spec.lr:g}, weight decay {spec.weight_decay:g}"),
        ("LoRA", f"rank {lora.rank}, alpha {lora.alpha:g}, dropout {lora.dropout:g}"),
        ("LoRA target modules", ", ".join(_code(name) for name in lora.target_modules)),
        ("Batch", f"{spec.batch_size_per_step} samples per worker step, {spec.target_batch_size} per swarm epoch"),
        ("Sequence length", f"{spec.seq_len} tokens"),
        ("Averaging", _averaging(spec)),
        ("Compression", averaging.compression),
        ("Aggregation", spec.robustness.aggregator),
        ("Adapter shards", str(spec.shards)),
        ("Trained so far", f"{manifest.epoch} swarm epochs, {manifest.samples} samples"),
        ("Eval split, seed", f"{spec.eval_fraction:g} of the dataset held out, seed {spec.seed}"),
    ]
    return [*lines, "| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows), "",
            "The full spec, as launched:", "", "```json", manifest.spec_json, "```"]


def _averaging(spec: RunSpec) -> str:
    averaging = spec.averaging
    if averaging.mode == "local":
        return (f"local (DiLoCo-style): outer lr {averaging.outer_lr:g}, outer momentum {averaging.outer_momentum:g}, "
                f"LoRA factors {averaging.lora_factors}")
    return f"sync (gradients averaged every epoch), state averaged every {averaging.average_state_every} epochs"
