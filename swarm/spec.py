"""RunSpec: everything that defines a community training run, validated on construction.

A RunSpec is immutable once launched; its ``content_hash`` names it exactly, and workers refuse to train a run
whose spec hash differs from the one they were assigned.

Usage::

    spec = RunSpec(name="demo", base_model="tiny", dataset="sample")
    spec = load_spec_file(Path("run.toml"), overrides={"shards": 2})
    spec.content_hash  # "sha256:..."
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from swarm.dataset_files import DatasetError, is_hub_name, parse_hub_dataset

RUN_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # always used with fullmatch: "demo\n" is no name
MAX_SHARDS = 64  # adapter shards of one run (and what a Join's max_shards may ask for)
VERSION_REF_PATTERN = re.compile(r"([a-z0-9][a-z0-9_-]{0,62})@([1-9][0-9]{0,8})")


def parse_version_ref(ref: str) -> tuple[str, int]:
    """'RUN@VERSION' -> (run, version); SpecError when it is not of that form."""
    match = VERSION_REF_PATTERN.fullmatch(ref.strip())
    if not match:
        raise SpecError(f"'{ref}' is not a published version reference of the form RUN@VERSION (e.g. demo@3)")
    return match.group(1), int(match.group(2))


class SpecError(ValueError):
    """A RunSpec (or a spec file) is invalid; the message says which field and why."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # no NaN or Infinity


class LoraSpec(_Frozen):
    """The LoRA adapter every worker of the run trains."""

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, le=1e5, description="LoRA scaling numerator (scale = alpha / rank).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        min_length=1,
        max_length=64,
        description="Names of the base model's linear modules that get a LoRA adapter.",
    )


class AveragingSpec(_Frozen):
    """hivemind.Optimizer settings that every peer of a shard's group must share."""

    matchmaking_time: float = Field(3.0, gt=0, le=600, description="Seconds to gather a group before averaging.")
    averaging_timeout: float = Field(30.0, gt=0, le=3600, description="Seconds before an all-reduce is abandoned.")
    average_state_every: int = Field(
        10, ge=1, le=1_000_000, description="Epochs between parameter/optimizer-state averaging rounds, which repair peers that "
        "stepped alone; gradients are averaged every epoch.",
    )
    progress_refresh_s: float = Field(
        3.0, gt=0, le=60, description="How often a peer re-reads the swarm's progress when it knows of no peers."
    )
    mode: Literal["sync", "local"] = Field(
        "sync", description="'sync': every epoch the group averages gradients and all peers take the same optimizer "
        "step (exact; for small swarms on fast links). 'local': every worker steps its own optimizer on each "
        "microbatch and once per epoch the group averages the change of the parameters since the last round and "
        "applies one outer step (DiLoCo; about target_batch_size / (peers x batch_size_per_step) local "
        "steps per round, for home links).",
    )
    outer_lr: float = Field(
        1.0, gt=0, le=10, description="local mode: learning rate of the outer (Nesterov) step; 1 with momentum 0 "
        "is plain parameter averaging, which converged best in benchmarks/local_convergence.py (DiLoCo's 0.7 with "
        "momentum 0.9 is tuned for hundreds of rounds of hundreds of steps).",
    )
    outer_momentum: float = Field(0.0, ge=0, lt=1, description="local mode: momentum of the outer Nesterov step.")
    lora_factors: Literal["alternate", "freeze_a", "both"] = Field(
        "both", description="local mode: which LoRA factor trains in a round. Averaging A and B after local steps "
        "is not the average of the products BA: 'both' trains and averages both (inexact, yet it converged best "
        "in benchmarks/local_convergence.py, 2 points ahead of the exact schemes), 'alternate' trains only B in even rounds and only A "
        "in odd ones (exact, RoLoRA), 'freeze_a' keeps A at its seeded initialisation (exact, FFA-LoRA).",
    )
    compression: Literal["none", "fp16", "8bit"] = Field(
        "none", description="How what is averaged travels: 'none' (fp32), 'fp16', or '8bit' (hivemind's uniform "
        "8-bit quantisation; local mode only, where the averaged change tolerates it).",
    )
    overlap: bool = Field(
        True, description="local mode: run a round's all-reduce in the background while the next local steps "
        "compute; its outer step is applied one round late, with the local progress made meanwhile kept.",
    )
    link_mbit: float = Field(
        10.0, gt=0, le=100_000, description="The slowest uplink (Mbit/s) the run is sized for: the averaging and "
        "chunk timeouts are raised to fit one round's payload at this rate.",
    )

    @model_validator(mode="after")
    def _check_compression(self) -> "AveragingSpec":
        if self.compression == "8bit" and self.mode != "local":
            raise ValueError("compression '8bit' is for mode 'local' (sync mode averages gradients: use 'fp16')")
        return self


DATA_FORMAT_DEFAULTS = {"data_format": "auto", "train_on_prompts": False, "packing": False}
LOCAL_MODE_FIELDS = ("mode", "outer_lr", "outer_momentum", "lora_factors", "compression", "overlap", "link_mbit")


class RobustnessSpec(_Frozen):
    """How the swarm defends itself against peers that send poisoned updates or lie about their progress.

    Every peer of a shard's group must share these (they are part of the spec hash): each peer reduces its part
    of the all-reduce with ``aggregator`` after refusing non-finite parts and parts whose norm is out of bounds.
    """

    aggregator: Literal["mean", "trimmed_mean", "median", "centered_clip"] = Field(
        "trimmed_mean", description="How each reducer combines its peers' parts: 'mean' (hivemind's weighted mean, "
        "exact, trusts every peer), coordinate-wise 'trimmed_mean' or 'median', or 'centered_clip' (BTARD).",
    )
    trim_fraction: float = Field(
        0.25, ge=0.0, lt=0.5, description="trimmed_mean: share of the parts cut from each side of every coordinate "
        "(at least one from each side once a group has 3 peers).",
    )
    clip_iterations: int = Field(3, ge=1, le=100, description="centered_clip: fixed-point iterations.")
    clip_radius_factor: float = Field(
        1.0, gt=0, le=100, description="centered_clip: clipping radius as a multiple of the median distance of the "
        "parts from the coordinate-wise median.",
    )
    max_norm_ratio: float = Field(
        10.0, gt=1, le=1e6, description="A part whose L2 norm exceeds this multiple of the reference norm (the larger "
        "of the reducer's own part and the lower median of all parts) is refused, as is any non-finite part.",
    )
    max_step_lr_multiple: float = Field(
        10.0, gt=0, le=1e6, description="Adam/AdamW: an optimizer step that moves a shard's parameters by more than "
        "this many learning rates per element (RMS) is rolled back and the shard reloads its state from peers.",
    )
    max_epoch_lead: int = Field(
        2, ge=0, le=1_000_000, description="Progress records claiming more than this many epochs beyond the median "
        "epoch of the shard's authorized peers are ignored (by workers and by the publisher).",
    )
    ban_after_reports: int = Field(
        10, ge=1, le=1_000_000, description="A peer whose contributions were refused this many times within an hour, "
        "as reported by at least two other peers of the run, is banned from the run.",
    )
    max_state_bytes: int | None = Field(
        None, ge=1024, le=2**40, description="Cap on one state download in bytes; default: 4x the shard's LoRA "
        "parameters in fp32 (parameters and Adam statistics) plus 1 MiB.",
    )
    max_version_change_ratio: float = Field(
        20.0, gt=1, le=1e6, description="A version whose parameters moved from the previous version's by more than "
        "this multiple of the largest per-epoch change the run has shown so far is refused.",
    )


class RunSpec(_Frozen):
    """One community training run. Every field is fixed at launch."""

    name: str = Field(description="Run name: lowercase letters, digits, '-' and '_', up to 63 characters.")
    base_model: str = Field("tiny", max_length=512, description="'tiny' (built-in preset), a Hugging Face model id or a local path.")
    dataset: str = Field(
        "sample", max_length=512, description="'sample' (built-in); a .jsonl, .json, .parquet, .csv or .txt file in "
        "one of the coordinator's dataset folders; or a Hugging Face Hub dataset 'hub:ORG/NAME[:SPLIT][@REVISION]' "
        "(where the coordinator allows the Hub).",
    )
    data_format: Literal["auto", "text", "instruction", "chat"] = Field(
        "auto", description="What the dataset's rows hold: 'text' (a 'text' column), 'instruction' (Alpaca "
        "'instruction', optional 'input', 'output'), 'chat' (a 'messages' list of role/content), or 'auto' (from "
        "the columns). Instruction and chat rows are rendered with the base model's chat template, or nomoat's "
        "default one when it has none.",
    )
    train_on_prompts: bool = Field(
        False, description="Instruction and chat data: train on every token, prompts included (default: only the "
        "answers are trained on and measured).",
    )
    packing: bool = Field(
        False, description="Pack several short samples into each seq_len row of a training batch (eval never packs).",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    shards: int = Field(1, ge=1, le=MAX_SHARDS, description="Number of adapter shards (by layer ranges), each averaged apart.")
    batch_size_per_step: int = Field(4, ge=1, le=1_048_576, description="Samples one worker processes per local step.")
    target_batch_size: int = Field(32, ge=1, le=1_073_741_824, description="Samples the whole swarm accumulates per optimizer epoch.")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Torch optimizer of every shard.")
    lr: float = Field(3e-3, gt=0, le=10, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=10, description="Weight decay (adamw and sgd).")
    seq_len: int = Field(64, ge=8, le=32768, description="Tokens per training sample (longer ones are cut).")
    eval_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of the dataset held out for eval loss.")
    data_slices: int = Field(4, ge=1, le=4096, description="The train split is cut into this many slices for workers.")
    publish_interval_s: float = Field(30.0, gt=0, le=7 * 86400, description="Seconds between adapter snapshots by the coordinator.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the LoRA initialisation and the data split.")
    averaging: AveragingSpec = Field(default_factory=AveragingSpec)
    robustness: RobustnessSpec = Field(default_factory=RobustnessSpec)
    parent: str | None = Field(
        None, description="Stack this run on a published version, 'RUN@VERSION': its workers train a new LoRA on "
        "the base model with that version (and the versions it was itself stacked on) merged in.",
    )

    @field_validator("parent")
    @classmethod
    def _check_parent(cls, value: str | None) -> str | None:
        if value is not None and not VERSION_REF_PATTERN.fullmatch(value):
            raise ValueError(f"must be RUN@VERSION (e.g. demo@3), not {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not RUN_NAME_PATTERN.fullmatch(value):
            raise ValueError("must be 1-63 characters of lowercase letters, digits, '-' or '_', starting alphanumeric")
        return value

    @field_validator("base_model", "dataset")
    @classmethod
    def _check_nonempty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if any(ord(char) < 32 or ord(char) == 127 for char in value):
            raise ValueError("must not hold control characters")
        return value

    @field_validator("dataset")
    @classmethod
    def _check_hub_id(cls, value: str) -> str:
        if is_hub_name(value):
            try:
                parse_hub_dataset(value)
            except DatasetError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _check_data_format(self) -> "RunSpec":
        if self.dataset == "sample" and self.data_format in ("instruction", "chat"):
            raise ValueError(f"data_format '{self.data_format}' needs an instruction or chat dataset; 'sample' is "
                             f"plain text")
        if self.train_on_prompts and self.data_format == "text":
            raise ValueError("train_on_prompts is for instruction and chat data; plain text is always trained on in "
                             "full")
        return self

    @model_validator(mode="after")
    def _check_batches(self) -> "RunSpec":
        if self.target_batch_size < self.batch_size_per_step:
            raise ValueError(
                f"target_batch_size ({self.target_batch_size}) must be at least "
                f"batch_size_per_step ({self.batch_size_per_step})"
            )
        return self

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON of this spec."""
        return "sha256:" + hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        fields = self.model_dump(mode="json")
        if fields["parent"] is None:  # runs that stack on nothing keep the hash they had before stacking existed
            del fields["parent"]
        if fields["robustness"] == RobustnessSpec().model_dump(mode="json"):
            del fields["robustness"]  # runs launched before robustness settings existed keep their hash
        defaults = AveragingSpec().model_dump(mode="json")
        for name in LOCAL_MODE_FIELDS:  # runs launched before local mode existed keep their hash
            if fields["averaging"][name] == defaults[name]:
                del fields["averaging"][name]
        for name, default in DATA_FORMAT_DEFAULTS.items():  # and so do runs launched before data formats existed
            if fields[name] == default:
                del fields[name]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        return build_spec(json.loads(text))

    def shard_run_id(self, shard: int) -> str:
        """The hivemind run_id of one adapter shard's averaging group."""
        return f"{self.name}_shard{shard}"


def build_spec(fields: dict[str, Any]) -> RunSpec:
    """Validate ``fields`` into a RunSpec, turning pydantic's report into one readable SpecError."""
    try:
        return RunSpec(**fields)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "spec"
            problems.append(f"{where}: {error['msg']}")
        raise SpecError("invalid run spec: " + "; ".join(problems)) from None
    except TypeError as exc:
        raise SpecError(f"invalid run spec: {exc}") from None


def load_spec_file(path: Path, overrides: dict[str, Any] | None = None) -> RunSpec:
    """Read a RunSpec from a .toml, .yaml/.yml or .json file; ``overrides`` (e.g. CLI flags) win."""
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            fields = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            fields = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            fields = json.loads(text)
        else:
            raise SpecError(f"spec file must be .toml, .yaml, .yml or .json, not {path.suffix or 'no suffix'}: {path}")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SpecError(f"cannot parse spec file {path}: {exc}") from None
    if not isinstance(fields, dict):
        raise SpecError(f"spec file {path} must hold a table/mapping of fields")
    return build_spec(merge_fields(fields, overrides or {}))


def merge_fields(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested merge where ``overrides`` wins; None values in overrides are ignored (unset flags), and so is a
    table of overrides that sets nothing: a table missing from ``base`` then keeps its defaults."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict):
            table = merge_fields(merged[key] if isinstance(merged.get(key), dict) else {}, value)
            if table:
                merged[key] = table
        else:
            merged[key] = value
    return merged
