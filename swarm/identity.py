"""A worker's persistent identity: the private key its hivemind/libp2p daemon uses, so its contributor ID is
its libp2p peer ID. Created on first use under the user's config directory.

Usage::

    identity = load_or_create_identity()          # ~/.config/nomoat/identity.key
    identity.peer_id                              # "12D3KooW..."
    start_dht(initial_peers, identity_path=identity.path)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hivemind.p2p import P2P, PeerID


def default_identity_path() -> Path:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return config_home / "nomoat" / "identity.key"


@dataclass(frozen=True)
class Identity:
    path: Path
    peer_id: str


def load_or_create_identity(path: Path | None = None) -> Identity:
    path = Path(path or default_identity_path()).expanduser()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        P2P.generate_identity(str(path))
        path.chmod(0o600)
    try:
        peer_id = PeerID.from_identity(path.read_bytes())
    except Exception as exc:
        raise ValueError(f"identity file {path} is not a libp2p private key: {exc}") from None
    return Identity(path=path, peer_id=peer_id.to_base58())
