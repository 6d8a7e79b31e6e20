"""The user's config file, ``$XDG_CONFIG_HOME/nomoat/config.toml`` (``~/.config/nomoat/config.toml``): defaults for
the options a volunteer would otherwise type on every command. A flag wins over the environment
(``NOMOAT_COORDINATOR``, ...), which wins over this file, which wins over the built-in default.

Usage::

    config = load_user_config(UserDirs.from_environment().user_config)   # UserConfig() when there is no file
    config.coordinator                                                     # "coord.example.org" or None

An example file::

    coordinator = "coord.example.org"
    fingerprint = "sha256:..."
    name = "alice"                 # swarm donate --name
    device = "cuda:0"              # swarm donate --device
    identity = "~/keys/nomoat.key" # swarm donate --identity
    join_token_file = "token.txt"  # --join-token, read from this file (relative paths: beside config.toml)

A key the file does not know, or a value of the wrong type, is refused with the file and the key named: a typo
must not silently fall back to a default.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")


class UserConfigError(ValueError):
    """The config file cannot be used; the message names the file and, where there is one, the key."""


@dataclass(frozen=True)
class UserConfig:
    """Every default the config file may set; None: not set (the environment or the built-in default applies)."""

    coordinator: str | None = None  # -c/--coordinator of every command: HOST[:PORT]
    ca: Path | None = None  # --ca of every command: CA certificate (PEM) that signs the coordinator's certificate
    fingerprint: str | None = None  # --fingerprint of every command: the pinned coordinator certificate
    name: str | None = None  # swarm donate --name: your display name on the leaderboard and model cards
    device: str | None = None  # swarm donate --device: auto, cpu, cuda or cuda:N
    identity: Path | None = None  # swarm donate --identity: libp2p key file
    join_token_file: Path | None = None  # a file holding a join token: the --join-token of every command

    def __post_init__(self) -> None:
        for key in ("coordinator", "fingerprint", "name"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise ValueError(f"'{key}' is empty")
        if self.device is not None and not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"'device' is auto, cpu, cuda or cuda:N, not {self.device!r}")

    def settings(self) -> dict[str, Any]:
        """The keys the file set, with their values."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def join_token(self) -> str | None:
        """The join token in ``join_token_file`` (None when no file is set); UserConfigError if it cannot be read."""
        if self.join_token_file is None:
            return None
        try:
            token = self.join_token_file.read_text().strip()
        except OSError as exc:
            raise UserConfigError(f"join_token_file {self.join_token_file} cannot be read: {exc.strerror}") from None
        if not token:
            raise UserConfigError(f"join_token_file {self.join_token_file} is empty")
        return token


PATH_KEYS = {"ca", "identity", "join_token_file"}
KNOWN_KEYS = tuple(f.name for f in fields(UserConfig))


def load_user_config(path: Path) -> UserConfig:
    """The config in ``path``; UserConfig() when there is no such file. Paths in it are expanded (``~``) and
    taken relative to the file's folder. UserConfigError for a file that is not TOML, an unknown key or a bad
    value."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return UserConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in KNOWN_KEYS:
            raise UserConfigError(f"config file {path}: unknown key '{key}' (known keys: {', '.join(KNOWN_KEYS)})")
        if not isinstance(value, str):
            raise UserConfigError(f"config file {path}: '{key}' must be a string, not {type(value).__name__}")
        values[key] = (path.parent / Path(value).expanduser()) if key in PATH_KEYS else value
    try:
        return UserConfig(**values)
    except ValueError as exc:
        raise UserConfigError(f"config file {path}: {exc}") from None
