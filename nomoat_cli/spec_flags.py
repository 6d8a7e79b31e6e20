"""The options of ``swarm launch``, derived from the fields of ``swarm.spec.RunSpec``: one flag per field.

A flag is named after the field's path in a spec file, with ``-`` for ``_`` and ``.``: ``lr`` is ``--lr``,
``batch_size_per_step`` is ``--batch-size-per-step``, ``[lora] rank`` is ``--lora-rank`` and ``[averaging]
matchmaking_time`` is ``--averaging-matchmaking-time``. Tuples (``lora.target_modules``) take comma-separated
values; a boolean field has ``--x`` and ``--no-x`` (``--no-averaging-overlap``). A flag that is not given leaves
the field to the ``--spec`` file, or to the RunSpec default.

Usage::

    flags = spec_flags()
    launch.__signature__ = inspect.Signature([flag.parameter() for flag in flags])
    overrides = flag_overrides(flags, values)  # {"lr": 0.01, "lora": {"rank": 4}}: what the user set
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from swarm.spec import RunSpec

_SCALARS = (bool, int, float, str)


def _split_commas(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class SpecFlag:
    """One RunSpec field as a command-line option."""

    path: tuple[str, ...]  # where the field sits in a spec: ("lora", "rank")
    annotation: Any  # what the option parses: bool, int, float or str
    help: str  # the field's description, what values it takes and its default
    parse: Callable[[Any], Any] | None = None  # option value -> field value, when they differ

    @property
    def name(self) -> str:
        """The Python parameter name: ``lora_rank``."""
        return "_".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parameter(self) -> inspect.Parameter:
        # a boolean field takes --x and --no-x: with only --x, a field that defaults to true could not be turned off
        declared = f"{self.flag}/--no-{self.flag[2:]}" if self.annotation is bool else self.flag
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[self.annotation],
                                 default=typer.Option(None, declared, help=self.help, show_default=False))


def _option_type(annotation: Any) -> tuple[Any, Callable[[Any], Any] | None, str]:
    """(option type, parser, what the help says about the values) of a field's annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in _SCALARS:
        return annotation, None, ""
    if origin is typing.Literal:
        return str, None, f" One of: {', '.join(map(str, args))}."
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = next(arg for arg in args if arg is not type(None))
        return _option_type(inner)
    if origin is tuple and len(args) == 2 and args[0] is str and args[1] is Ellipsis:
        return str, _split_commas, " Comma-separated."
    raise TypeError(f"no command-line option type for a RunSpec field of type {annotation!r}")


def _describe(info: FieldInfo, values: str) -> str:
    text = (info.description or "").strip() + values
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if default is not None:  # not as the option's default: an unset flag must leave the field to the spec file
        text += f"  [default: {','.join(map(str, default)) if isinstance(default, tuple) else default}]"
    return text


def spec_flags(model: type[BaseModel] = RunSpec, prefix: tuple[str, ...] = ()) -> list[SpecFlag]:
    """A flag for every leaf field of ``model``; nested spec tables (``lora``, ``averaging``) are flattened."""
    flags = []
    for field_name, info in model.model_fields.items():
        path = (*prefix, field_name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            flags.extend(spec_flags(annotation, path))
            continue
        option_type, parse, values = _option_type(annotation)
        flags.append(SpecFlag(path, option_type, _describe(info, values), parse))
    names = [flag.name for flag in flags]
    if len(set(names)) != len(names):
        raise TypeError(f"two RunSpec fields map to the same flag: {sorted(n for n in names if names.count(n) > 1)}")
    return flags


def flag_overrides(flags: list[SpecFlag], values: dict[str, Any]) -> dict[str, Any]:
    """The nested spec fields of the flags that were given (not None), parsed into field values."""
    overrides: dict[str, Any] = {}
    for flag in flags:
        value = values.get(flag.name)
        if value is None:
            continue
        table = overrides
        for key in flag.path[:-1]:
            table = table.setdefault(key, {})
        table[flag.path[-1]] = flag.parse(value) if flag.parse else value
    return overrides
