"""Roles and credentials: run settings (join policy, private, state, default run) and hashed join tokens.

Runs launched before this revision become open, public and active, as they were served until now.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_settings",
        sa.Column("run_name", sa.String(200), sa.ForeignKey("runs.name"), primary_key=True),
        sa.Column("join_policy", sa.String(16), nullable=False),
        sa.Column("is_private", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute("INSERT INTO run_settings (run_name, join_policy, is_private, state, is_default, changed_at) "
               "SELECT name, 'open', false, 'active', false, created_at FROM runs")
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_name", sa.String(200), sa.ForeignKey("runs.name"), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("token_sha256", name="uq_join_tokens_token_sha256"),
    )
    op.create_index("ix_join_tokens_run_name", "join_tokens", ["run_name"])


def downgrade() -> None:
    op.drop_index("ix_join_tokens_run_name", table_name="join_tokens")
    op.drop_table("join_tokens")
    op.drop_table("run_settings")
