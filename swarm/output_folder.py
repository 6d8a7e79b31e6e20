"""Writing ``swarm pull`` / ``swarm export`` output into ``--out`` without ever deleting a user's files.

Each output folder gets a marker, ``.nomoat-output.json``, listing the entries (top-level files and folders) the
pull or export wrote. Into ``out``:

- missing: the whole folder is written beside it and renamed into place (all or nothing);
- empty: the entries are written into it;
- holding a marker (an earlier pull or export): the new entries replace the ones of the same name that the
  earlier one wrote, entries it wrote that are not written again are removed, and every other file is kept;
  an unlisted file of the same name as a new entry is refused (it is the user's);
- anything else (a project folder, a home folder): refused, unless ``force``; then the new entries are added,
  replacing unlisted *files* of the same name, and nothing else is touched (an unlisted folder of the same name
  is still refused: replacing it would delete what is inside).

Usage::

    write_output_folder(Path("adapter"), lambda staging: copy_files_into(staging), force=False, what="swarm pull")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from swarm.merge import write_folder_atomically

OUTPUT_MARKER = ".nomoat-output.json"
_STAGING_PREFIX = ".nomoat-staging-"


class OutputFolderError(FileExistsError):
    """``--out`` holds files this tool did not write, so writing there could destroy them."""


def write_output_folder(out: Path, write: Callable[[Path], None], *, force: bool = False,
                        what: str = "swarm pull") -> Path:
    """Call ``write(staging)`` on an empty folder, then put its entries into ``out`` by the rules above."""
    out = Path(out).expanduser().absolute()
    check_output_folder(out, force=force)
    if not out.exists():
        return write_folder_atomically(out, lambda staging: _write_marked(staging, write, what))
    previous = _owned_entries(out)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out))
    try:
        write(staging)
        entries = sorted(path.name for path in staging.iterdir())
        _check_collisions(out, entries, previous or set(), force)
        # list both old and new entries first: a crash midway leaves nothing of ours unlisted
        _write_marker(out, sorted((previous or set()) | set(entries)), what)
        aside = staging / (_STAGING_PREFIX + "old")
        aside.mkdir()
        for name in entries:
            target, new = out / name, staging / name
            if target.is_dir() and not target.is_symlink():
                os.replace(target, aside / name)  # ours (checked above); removed below with the staging folder
            elif new.is_dir() and (target.exists() or target.is_symlink()):
                target.unlink()  # a file of ours, or one --force replaces, where a folder goes now
            os.replace(new, target)
        for name in sorted((previous or set()) - set(entries)):
            stale = out / name
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)
        _write_marker(out, entries, what)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def check_output_folder(out: Path, *, force: bool = False) -> None:
    """OutputFolderError if ``out`` may not be written into (see above); callers check before long work."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} exists and is not a folder; choose another --out")
    if not out.is_dir() or force or _owned_entries(out) is not None:
        return
    if any(not path.name.startswith(_STAGING_PREFIX) for path in out.iterdir()):
        raise OutputFolderError(
            f"{out} is not empty and was not written by swarm pull or swarm export: refusing to write into it, so "
            f"that none of its files is lost. Choose a new or empty folder for --out, or pass --force to add the "
            f"files to it (files of the same names are replaced, all others are kept)")


def _write_marked(staging: Path, write: Callable[[Path], None], what: str) -> None:
    write(staging)
    _write_marker(staging, sorted(path.name for path in staging.iterdir()), what)


def _write_marker(folder: Path, entries: list[str], what: str) -> None:
    partial = folder / (OUTPUT_MARKER + ".partial")
    partial.write_text(json.dumps({"written_by": what, "entries": entries}, indent=2) + "\n")
    os.replace(partial, folder / OUTPUT_MARKER)


def _owned_entries(out: Path) -> set[str] | None:
    """The entries an earlier pull or export wrote into ``out``; None when it holds no (readable) marker."""
    try:
        entries = json.loads((out / OUTPUT_MARKER).read_text()).get("entries")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entries, list) or not all(isinstance(name, str) for name in entries):
        return None
    # a marker can only claim plain names in this folder
    return {name for name in entries if name and name not in (".", "..") and "/" not in name and "\\" not in name}


def _check_collisions(out: Path, entries: list[str], owned: set[str], force: bool) -> None:
    for name in entries:
        target = out / name
        if not (target.exists() or target.is_symlink()) or name in owned:
            continue
        if target.is_dir() and not target.is_symlink():
            raise OutputFolderError(f"{target} is a folder that swarm did not write; it would be replaced by the "
                                    f"pulled {name}: move it away or choose another --out")
        if not force:
            raise OutputFolderError(f"{target} was not written by the earlier pull or export into {out}; pass "
                                    f"--force to replace it with the pulled {name}, or move it away")
