"""Alembic migrations for the coordinator database (see coordinator/alembic.ini)."""
