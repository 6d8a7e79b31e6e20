"""The three shapes a dataset's rows may have, checked row by row:

- ``text``: a string column ``text`` (a ``.txt`` file: one sample per line). Every token is trained on.
- ``instruction`` (Alpaca): string columns ``instruction`` and ``output``, and an optional ``input``. Each row
  becomes a two-message chat: the user says the instruction (then a blank line and the input, when there is one),
  the assistant answers the output.
- ``chat``: a column ``messages``, a list of ``{"role": ..., "content": ...}`` with roles ``system`` (first
  only), ``user`` and ``assistant``, and at least one assistant message. In a CSV file the column holds that list
  as a JSON string.

``auto`` picks chat when there is a ``messages`` column, else instruction when there are ``instruction`` and
``output`` columns, else text. Errors name the file, the row (counted from 1) and the field.

Usage::

    data_format, records = parse_rows(rows, "auto", source="alpaca.jsonl")
    # ("instruction", [[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}], ...])
"""

from __future__ import annotations

import json
from typing import Any, Union

from swarm.dataset_files import DatasetError

DATA_FORMATS = ("auto", "text", "instruction", "chat")
ROLES = ("system", "user", "assistant")

Message = dict[str, str]
Record = Union[str, list[Message]]  # a text, or a conversation


def detect_format(rows: list[dict[str, Any]], source: str) -> str:
    columns = set(rows[0]) if rows else set()
    if "messages" in columns:
        return "chat"
    if {"instruction", "output"} <= columns:
        return "instruction"
    if "text" in columns:
        return "text"
    raise DatasetError(f"{source}: no 'messages' (chat), 'instruction' and 'output' (instruction) or 'text' column; "
                       f"its columns are {sorted(columns) or 'none'}")


def parse_rows(rows: list[dict[str, Any]], data_format: str, source: str) -> tuple[str, list[Record]]:
    """(the format, resolved from 'auto'; one record per usable row)."""
    if data_format not in DATA_FORMATS:
        raise DatasetError(f"data_format must be one of {', '.join(DATA_FORMATS)}, not {data_format!r}")
    if data_format == "auto":
        data_format = detect_format(rows, source)
    parse = {"text": _text, "instruction": _instruction, "chat": _chat}[data_format]
    records: list[Record] = []
    for number, row in enumerate(rows, start=1):
        record = parse(row, f"{source} row {number}")
        if record is not None:
            records.append(record)
    if len(records) < 2:
        raise DatasetError(f"{source} holds {len(records)} {data_format} samples; at least 2 are needed "
                           f"(train and eval)")
    return data_format, records


def _string(row: dict[str, Any], field: str, where: str, required: bool = True) -> str:
    value = row.get(field)
    if value is None:
        if required:
            raise DatasetError(f"{where}: '{field}' is missing")
        return ""
    if not isinstance(value, str):
        raise DatasetError(f"{where}: '{field}' must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise DatasetError(f"{where}: '{field}' is empty")
    return value


def _text(row: dict[str, Any], where: str) -> str | None:
    if row.get("text") is None:
        raise DatasetError(f"{where}: 'text' is missing")
    text = _string(row, "text", where, required=False)
    return text if text.strip() else None  # blank lines and empty texts are skipped, as they always were


def _instruction(row: dict[str, Any], where: str) -> list[Message]:
    instruction = _string(row, "instruction", where)
    extra = _string(row, "input", where, required=False)
    output = _string(row, "output", where)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _chat(row: dict[str, Any], where: str) -> list[Message]:
    messages = row.get("messages")
    if isinstance(messages, str):  # CSV cannot nest: the list arrives as JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise DatasetError(f"{where}: 'messages' is a string but not a JSON list of messages") from None
    if messages is None:
        raise DatasetError(f"{where}: 'messages' is missing")
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}} messages")
    checked: list[Message] = []
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise DatasetError(f"{where}: message {index} must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DatasetError(f"{where}: message {index} has role {role!r}; expected system, user or assistant")
        if role == "system" and index != 1:
            raise DatasetError(f"{where}: message {index} is a system message; only the first message may be one")
        if not isinstance(content, str):
            raise DatasetError(f"{where}: message {index} has no string 'content'")
        checked.append({"role": role, "content": content})
    if not any(message["role"] == "assistant" for message in checked):
        raise DatasetError(f"{where}: no assistant message, so nothing to train on")
    return checked
