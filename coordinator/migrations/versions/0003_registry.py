"""Adapter registry: signed manifests, releases and garbage collection of versions, rejected snapshots.

Versions published before this revision have no manifest (NULL); they are still served, and a puller that
requires signed manifests refuses them with a clear message.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.add_column(sa.Column("manifest", sa.Text(), nullable=True))
        batch.add_column(sa.Column("manifest_signature", sa.Text(), nullable=True))
        batch.add_column(sa.Column("is_release", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("collected_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "rejected_snapshots",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_name", sa.String(200), sa.ForeignKey("runs.name"), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rejected_snapshots_run_name", "rejected_snapshots", ["run_name"])


def downgrade() -> None:
    op.drop_index("ix_rejected_snapshots_run_name", table_name="rejected_snapshots")
    op.drop_table("rejected_snapshots")
    with op.batch_alter_table("adapter_versions") as batch:
        batch.drop_column("collected_at")
        batch.drop_column("is_release")
        batch.drop_column("manifest_signature")
        batch.drop_column("manifest")
