"""Files only their owner may read: identity keys, databases, peer books, trusted coordinator keys.

A secret never exists on disk with a wider mode, not even for a moment: new files are created with
``O_CREAT | O_EXCL`` and mode 0600 under a temporary name, written, fsynced and renamed into place, in folders
created 0700. A key file that others can read is refused (it may have been copied already), with the ``chmod``
that fixes it.

Usage::

    private_folder(Path("~/.config/nomoat").expanduser())            # created 0700 (parents too)
    write_private_file(path, data)                                   # replaces atomically, mode 0600
    write_private_file(path, data, replace=False)                    # FileExistsError if it appeared meanwhile
    require_private(path)                                            # InsecureFileError when group/others have access
    private_sqlite_file(Path("coordinator.db"))                      # before sqlite connects: DB, -wal, -shm 0600
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_FOLDER_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class InsecureFileError(PermissionError):
    """A secret file that users other than its owner can read or write."""


def private_folder(folder: Path) -> Path:
    """``folder``, created with mode 0700 where it (or a parent) is missing; existing folders keep their mode."""
    folder = Path(folder).expanduser()
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_FOLDER_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process
        path.chmod(PRIVATE_FOLDER_MODE)  # mkdir's mode is narrowed by the umask, never widened: make it exact
    return folder


def require_private(path: Path) -> None:
    """Refuse ``path`` if its group or others have any access to it, naming the fix."""
    mode = Path(path).stat().st_mode & 0o777
    if mode & 0o077:
        raise InsecureFileError(f"{path} holds a secret but is readable by other users (mode {mode:04o}); "
                                f"run: chmod 600 {path}")


def write_private_file(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically: readers see the old file or the whole new one.

    ``replace=False`` creates the file only if it does not exist (FileExistsError otherwise), so two processes
    creating the same key at once cannot end up using different keys."""
    path = Path(path).expanduser()
    private_folder(path.parent)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                         PRIVATE_FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if path exists: no clobbering
    finally:
        temporary.unlink(missing_ok=True)
    fsync_folder(path.parent)


def private_sqlite_file(path: Path) -> Path:
    """Make the SQLite database ``path`` (created empty if missing) and its side files mode 0600, before SQLite
    opens it: SQLite creates the -wal and -shm files with the database file's mode."""
    path = Path(path).expanduser()
    private_folder(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE_MODE))
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_SIDE_FILES)):
        if candidate.exists():
            candidate.chmod(PRIVATE_FILE_MODE)  # files of an earlier version, made under the umask
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename or creation in ``folder`` durable (the folder's own entry list is flushed)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
