"""Join tokens (``JoinTokenStore``): credentials the operator mints per run, kept only as their sha256."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from coordinator.schema import JoinToken
from coordinator.storage.database import Database, StorageError, to_record
from coordinator.storage.runs import require_run


class UnknownTokenError(StorageError):
    """No join token with this id exists."""


@dataclass(frozen=True)
class JoinTokenRecord:
    id: int
    run_name: str
    token_sha256: str
    label: str
    created_at: datetime
    revoked_at: datetime | None  # None while the token is valid


class JoinTokenStore:
    """Join tokens by run. The store sees hashes only: hashing (and making) tokens is the caller's business.

    Example::

        record = storage.tokens.add("demo", hashlib.sha256(token.encode()).hexdigest(), label="alice")
        storage.tokens.find(digest)        # the record, revoked or not; None for an unknown hash
        storage.tokens.revoke(record.id)
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def add(self, run_name: str, token_sha256: str, label: str = "") -> JoinTokenRecord:
        if len(token_sha256) != 64:
            raise ValueError("token_sha256 must be a sha256 hex digest")
        with self._db.transaction() as session:
            require_run(session, run_name)
            row = JoinToken(run_name=run_name, token_sha256=token_sha256, label=label, created_at=self._db.now(),
                            revoked_at=None)
            session.add(row)
            session.flush()
            return to_record(JoinTokenRecord, row)

    def find(self, token_sha256: str) -> JoinTokenRecord | None:
        with self._db.transaction() as session:
            row = session.scalar(select(JoinToken).where(JoinToken.token_sha256 == token_sha256))
            return None if row is None else to_record(JoinTokenRecord, row)

    def list_tokens(self, run_name: str) -> list[JoinTokenRecord]:
        """The run's tokens, oldest first, revoked ones included."""
        with self._db.transaction() as session:
            require_run(session, run_name)
            rows = session.scalars(select(JoinToken).where(JoinToken.run_name == run_name).order_by(JoinToken.id))
            return [to_record(JoinTokenRecord, row) for row in rows]

    def revoke(self, token_id: int) -> JoinTokenRecord:
        """Revoke the token (again: harmless, the first revocation time is kept)."""
        with self._db.transaction() as session:
            row = session.get(JoinToken, token_id)
            if row is None:
                raise UnknownTokenError(f"no join token with id {token_id}")
            if row.revoked_at is None:
                row.revoked_at = self._db.now()
            return to_record(JoinTokenRecord, row)
