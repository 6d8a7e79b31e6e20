"""The coordinator database: one engine, its Alembic upgrade, short transactions and the clock that the stores
(``runs``, ``ledger``, ``versions``) share, plus the checks and the row-to-record conversion they all use.

Nothing here knows about a particular table except through ``coordinator.schema``; the stores do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from coordinator.schema import Base
from swarm.private_files import private_sqlite_file

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
R = TypeVar("R")


class StorageError(Exception):
    """Base class of every error raised by the coordinator's storage."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def require_utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value!r}")
    return value.astimezone(timezone.utc)


def require_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def require_finite(**values: float) -> None:
    # SQLite stores NaN as NULL, so non-finite numbers are rejected rather than silently lost.
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")


def to_record(record_type: type[R], row: Base) -> R:
    """The frozen record of a row; model attribute names match the record's field names."""
    names = [field.name for field in fields(record_type)]  # type: ignore[arg-type]  # R is a record dataclass
    return record_type(**{name: getattr(row, name) for name in names})


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    in_memory = parsed.database in (None, "", ":memory:")
    if not in_memory and not str(parsed.database).startswith("file:"):
        private_sqlite_file(Path(str(parsed.database)))  # the DB and its -wal/-shm: 0600 from the start
    # An in-memory database exists only within one connection, so every session must share it.
    extra = {"poolclass": StaticPool} if in_memory else {}
    engine = create_engine(url, connect_args={"check_same_thread": False}, **extra)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Take over transaction control from the sqlite3 module, so that _on_begin can open them.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            # With WAL, NORMAL never corrupts the database; only a power cut can drop the last commits.
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        # A deferred transaction that reads and then writes fails at once with "database is locked" when
        # another writer got in between (busy_timeout does not apply); taking the write lock up front
        # makes concurrent writers queue instead.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    """An open coordinator database, upgraded to the newest schema (``alembic upgrade head``) on opening, so
    opening it again is harmless. Safe to share between threads.

    ``clock`` returns the current time (timezone-aware); tests pass a fake one to control timestamps.
    A ``sqlite://`` in-memory database is one shared connection: use a file for concurrent access.

    Example::

        database = Database("sqlite:///coordinator.db")
        with database.transaction() as session:  # one short transaction; SQLAlchemy errors become StorageError
            session.add(row)
        database.close()
    """

    def __init__(self, url: str, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._clock = clock
        self._engine = _make_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._migrate(url)

    def _migrate(self, url: str) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        # ConfigParser treats '%' as interpolation, and URLs may contain percent-escapes.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        try:
            with self._engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise StorageError(f"could not migrate the database: {exc}") from exc

    def close(self) -> None:
        self._engine.dispose()

    def now(self) -> datetime:
        """The clock's current time in UTC."""
        return require_utc(self._clock(), "clock()")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction, committed on leaving; SQLAlchemy errors are raised as ``StorageError``
        (with the original as ``__cause__``)."""
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(f"storage operation failed: {exc}") from exc
