"""Test-wide setup: no hub downloads, one torch thread, and every child process (p2pd, hivemind averagers,
worker and coordinator processes) reaped at the end of the session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# hivemind's default (file_system) shares tensors through torch's shm manager; in the pytest process, which
# runs in-process coordinators and peers for a whole session, a tensor still held at exit then aborts the
# interpreter ("terminate called ... Broken pipe") after all tests passed. File descriptors need no manager.
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

import psutil  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def user_folders(tmp_path_factory):
    """Config (identities, trusted coordinator keys) and cache (pulled adapters) of the session's own user, so
    tests never read or write the real ~/.config/nomoat or ~/.cache/nomoat."""
    home = tmp_path_factory.mktemp("user")
    saved = {name: os.environ.get(name) for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    os.environ["XDG_CONFIG_HOME"], os.environ["XDG_CACHE_HOME"] = str(home / "config"), str(home / "cache")
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def trusted_coordinators(tmp_path, monkeypatch):
    """Each test trusts coordinators afresh: test coordinators have new keys, and a later test may get an
    earlier one's port, which trust-on-first-use would (rightly) refuse."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user-config"))


@pytest.fixture(scope="session", autouse=True)
def reap_children():
    yield
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


# Databases: every storage-backed test that takes ``db_url`` runs on SQLite, and on PostgreSQL when a server
# answers at 127.0.0.1:5432 (database ``test``, trust auth) and psycopg is installed; .ci/run starts it.

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_unavailable_reason() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    try:
        psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", connect_timeout=2).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at {POSTGRES_URL}: {' '.join(str(exc).split())}"
    return None


PG_SKIP = _postgres_unavailable_reason()
_POSTGRES_PARAM = pytest.param("postgresql", marks=pytest.mark.skipif(PG_SKIP is not None, reason=str(PG_SKIP)))


@pytest.fixture(params=["sqlite", _POSTGRES_PARAM])
def db_url(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'coordinator.db'}"
        return
    import uuid

    from sqlalchemy import create_engine, text

    # A fresh schema per test, first on the search path, keeps tests (and their alembic_version) apart.
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
