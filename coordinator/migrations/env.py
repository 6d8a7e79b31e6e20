"""Alembic environment for the coordinator database.

``Storage`` runs migrations on its own engine's connection, passed in ``config.attributes["connection"]``;
the ``alembic`` command line instead gets the URL from ``-x url=...`` or ``sqlalchemy.url`` in alembic.ini.
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from coordinator.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    # render_as_batch lets later revisions alter tables on SQLite, which lacks most ALTER TABLE forms.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set sqlalchemy.url in alembic.ini")
    return url


shared_connection = config.attributes.get("connection")
if shared_connection is not None:
    _run(shared_connection)
elif context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    # Only the command line configures logging from the ini file; inside the coordinator that would
    # replace the application's own logging setup.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = create_engine(_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()
