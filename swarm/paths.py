"""The user's nomoat folders, resolved once from the environment (XDG base directories) by an entry point and
passed down; library code takes the folders it needs as parameters and never reads ``XDG_*`` itself.

Usage::

    dirs = UserDirs.from_environment()     # $XDG_CONFIG_HOME/nomoat, $XDG_CACHE_HOME/nomoat (or ~/.config, ~/.cache)
    identity = load_or_create_identity(dirs.identity_key)
    pull(address, "demo", out, user_dirs=dirs)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

APP = "nomoat"


@dataclass(frozen=True)
class UserDirs:
    """Where one user's nomoat files live."""

    config: Path  # config.toml, identity key, trusted coordinator keys (known_coordinators.json), receipt outboxes
    cache: Path  # pulled adapter versions, content-addressed; safe to delete

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", Path(self.config).expanduser())
        object.__setattr__(self, "cache", Path(self.cache).expanduser())

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "UserDirs":
        """``$XDG_CONFIG_HOME/nomoat`` and ``$XDG_CACHE_HOME/nomoat``, each defaulting under the home folder."""
        config_home = environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
        cache_home = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return cls(config=Path(config_home) / APP, cache=Path(cache_home) / APP)

    @property
    def user_config(self) -> Path:
        """The user's defaults for the ``swarm`` options (``swarm.user_config``)."""
        return self.config / "config.toml"

    @property
    def identity_key(self) -> Path:
        """The worker's libp2p key file (its peer ID)."""
        return self.config / "identity.key"

    @property
    def known_coordinators(self) -> Path:
        """Coordinator address -> the signing key's peer ID first seen there (trust on first use)."""
        return self.config / "known_coordinators.json"

    @property
    def seen_versions(self) -> Path:
        """Signer peer ID -> run -> the highest version verified from it (a lower "latest" is a downgrade)."""
        return self.config / "seen_versions.json"

    @property
    def adapter_cache(self) -> Path:
        """Pulled versions, one folder per content digest."""
        return self.cache / "adapters"
