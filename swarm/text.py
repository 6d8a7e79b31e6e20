"""Text from strangers made safe to store and print: ANSI escape sequences and control characters removed.

A display name, device or error message that came over the network may hold terminal escapes (recolour, move
the cursor, rewrite earlier lines) or bidi overrides that make one name look like another. Both the coordinator
(before it stores a string) and the CLI (before it prints one a coordinator sent) pass it through here.

Usage::

    printable("\\x1b[31mroot\\x1b[0m\\n")   # -> "root"
    printable(name, limit=64)             # also at most 64 characters
    one_line("  Ada\t Lovelace ", 64)     # -> "Ada Lovelace"
"""

from __future__ import annotations

import re
import unicodedata

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-character escapes (ESC + one character)
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]")
_SCAN_FACTOR = 16  # at most limit * this many characters are looked at: cleaning a huge string costs little


def printable(text: str, limit: int | None = None) -> str:
    """``text`` without escape sequences and control or format characters (Unicode category C; tabs and line
    breaks become spaces), at most ``limit`` characters."""
    if limit is not None:
        text = text[: max(limit, 1) * _SCAN_FACTOR]
    text = _ANSI.sub("", text)
    kept = "".join(" " if char.isspace() else char for char in text
                   if char.isspace() or not unicodedata.category(char).startswith("C"))
    return kept if limit is None else kept[:limit]


def one_line(text: str, limit: int) -> str:
    """``printable`` with runs of whitespace made one space and trimmed: a name to store or show."""
    return " ".join(printable(text, limit * 4).split())[:limit].rstrip()
