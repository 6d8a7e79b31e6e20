"""Checks of the fields of a request, as small pure functions the service calls before it acts: every string
bounded and cleaned of control characters, names fullmatched, numbers in range, JSON bounded in size and depth.

Each raises ``RequestError`` with a message that quotes at most a short prefix of what it refused.

Usage::

    run_name = check_run_name(request.run_name)          # NOT_FOUND for anything that cannot be a run name
    name = clean_display_name(request.display_name)      # never refused: cleaned and cut to 64 characters
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from swarm.receipts import PEER_ID_PATTERN
from swarm.spec import MAX_SHARDS, RUN_NAME_PATTERN, RunSpec, SpecError, build_spec
from swarm.text import one_line, printable

WORKER_ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # uuid4 hex, as the storage mints them
MAX_DISPLAY_NAME = 64
MAX_DEVICE = 64
MAX_JSON_DEPTH = 32  # a RunSpec nests 2 deep; a JSON parser recurses once per level
MAX_VERSION = 10**9
MAX_OFFSET_FILES = 64
MAX_FILE_NAME = 255
MAX_OFFSET = 2**50


class RequestError(ValueError):
    """The request is invalid; ``not_found`` tells the servicer which status code fits."""

    def __init__(self, message: str, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


def quoted(text: str, limit: int = 40) -> str:
    """``text`` for an error message: printable, short, and marked when cut."""
    shown = repr(printable(text, limit))
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def check_run_name(name: str) -> str:
    if not RUN_NAME_PATTERN.fullmatch(name):
        raise RequestError(f"no run named {quoted(name)}", not_found=True)
    return name


def check_peer_id(peer_id: str) -> str:
    if not peer_id:
        raise RequestError("join needs the worker's peer_id")
    if not PEER_ID_PATTERN.fullmatch(peer_id):
        raise RequestError(f"peer_id {quoted(peer_id)} is not a base58 libp2p peer ID (32..128 characters)")
    return peer_id


def check_worker_id(worker_id: str) -> str:
    if not WORKER_ID_PATTERN.fullmatch(worker_id):
        raise RequestError(f"no worker with id {quoted(worker_id)}", not_found=True)
    return worker_id


def clean_display_name(name: str, peer_id: str) -> str:
    """A name safe to store and print (no escapes or control characters, at most 64 characters); the peer ID's
    start when nothing is left."""
    return one_line(name, MAX_DISPLAY_NAME) or peer_id[:12]


def clean_device(device: str) -> str:
    return one_line(device, MAX_DEVICE)


def check_max_shards(max_shards: int) -> int:
    """0 (all shards) or a positive count; more than the run has means all of them."""
    if not 0 <= max_shards <= MAX_SHARDS:
        raise RequestError(f"max_shards must be 0 (all shards) or 1..{MAX_SHARDS}, got {max_shards}")
    return max_shards


def check_join(run_name: str, peer_id: str, display_name: str, max_shards: int, device: str) -> tuple[str, str, str]:
    """What ``CoordinatorService.join`` checks before anything else: the run name ("" for the default run),
    the peer ID and max_shards; returns the cleaned display name and device, and the run name."""
    if run_name:
        check_run_name(run_name)
    check_peer_id(peer_id)
    check_max_shards(max_shards)
    return run_name, clean_display_name(display_name, peer_id), clean_device(device)


def check_version(version: int) -> int:
    """0 (latest) or a version number."""
    if not 0 <= version <= MAX_VERSION:
        raise RequestError(f"version must be 0 (latest) or 1..{MAX_VERSION}, got {version}")
    return version


def check_chunk_bytes(chunk_bytes: int, largest: int) -> int:
    if not 0 <= chunk_bytes <= largest:
        raise RequestError(f"chunk_bytes must be 0 (the server's default) or at most {largest}, got {chunk_bytes}")
    return chunk_bytes


def check_offsets(offsets: Mapping[str, int]) -> dict[str, int]:
    """A resumed pull's offsets: a few file names, each with a non-negative byte count."""
    if len(offsets) > MAX_OFFSET_FILES:
        raise RequestError(f"offsets name {len(offsets)} files; at most {MAX_OFFSET_FILES} are accepted")
    for name, offset in offsets.items():
        if not 0 < len(name) <= MAX_FILE_NAME:
            raise RequestError(f"offsets: file name {quoted(name)} must have 1..{MAX_FILE_NAME} characters")
        if not 0 <= offset <= MAX_OFFSET:
            raise RequestError(f"offsets: {quoted(name)} has offset {offset}; it must be within 0..{MAX_OFFSET}")
    return dict(offsets)


def check_batch_size(count: int, largest: int) -> None:
    if count == 0:
        raise RequestError("the batch holds no receipts")
    if count > largest:
        raise RequestError(f"the batch holds {count} receipts; at most {largest} are accepted per call")


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (brackets inside strings do not count); a linear
    scan, so it is safe on any input a size limit let through."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_spec_json(text: str, max_bytes: int) -> RunSpec:
    """A RunSpec from a LaunchRun's JSON: bounded in size and depth, an object, every field validated."""
    size = len(text.encode())
    if size > max_bytes:
        raise RequestError(f"the spec JSON is {size} bytes; at most {max_bytes} are accepted")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise RequestError(f"the spec JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        fields: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"the spec is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(fields, dict):
        raise RequestError(f"the spec JSON must be an object, got {type(fields).__name__}")
    try:
        return build_spec(fields)
    except SpecError as exc:
        raise RequestError(str(exc)) from None
