"""Where clients find the credentials they present to a coordinator (``swarm.client.Endpoint``): the operator
token (a file the coordinator writes into its data dir on first start, or an environment variable) and a
volunteer's join token.

Usage::

    token = operator_token(token_file=None)        # --operator-token-file, else $NOMOAT_OPERATOR_TOKEN(_FILE)
    endpoint = Endpoint("coord.example.org:50051", operator_token=token)
    Endpoint(address, operator_token=read_operator_token(data_dir / OPERATOR_TOKEN_FILE))  # a local coordinator
"""

from __future__ import annotations

import os
from pathlib import Path

OPERATOR_TOKEN_FILE = "operator.token"  # in the coordinator's data dir
OPERATOR_TOKEN_ENV = "NOMOAT_OPERATOR_TOKEN"
OPERATOR_TOKEN_FILE_ENV = "NOMOAT_OPERATOR_TOKEN_FILE"
JOIN_TOKEN_ENV = "NOMOAT_JOIN_TOKEN"


class CredentialError(ValueError):
    """A credential that was asked for cannot be read."""


def read_operator_token(path: Path) -> str:
    """The token in the operator token file ``path``."""
    path = Path(path).expanduser()
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CredentialError(f"cannot read the operator token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise CredentialError(f"the operator token file {path} is empty")
    return token


def operator_token(token_file: Path | None = None) -> str | None:
    """The operator token from ``token_file``, else ``$NOMOAT_OPERATOR_TOKEN``, else the file named by
    ``$NOMOAT_OPERATOR_TOKEN_FILE``; None when none is given."""
    if token_file is not None:
        return read_operator_token(token_file)
    if os.environ.get(OPERATOR_TOKEN_ENV, "").strip():
        return os.environ[OPERATOR_TOKEN_ENV].strip()
    if os.environ.get(OPERATOR_TOKEN_FILE_ENV, "").strip():
        return read_operator_token(Path(os.environ[OPERATOR_TOKEN_FILE_ENV]))
    return None
