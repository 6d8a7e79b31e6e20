"""Peer reports and bans: workers report peers whose contributions their averagers refused; a peer reported
often enough by at least two reporters, or named by the operator, is banned from the run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "peer_reports",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_name", sa.String(200), sa.ForeignKey("runs.name", name="fk_peer_reports_run_name_runs"),
                  nullable=False),
        sa.Column("peer_id", sa.String(256), nullable=False),
        sa.Column("reporter", sa.String(256), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_peer_reports"),
    )
    op.create_index("ix_peer_reports_run_name_peer_id", "peer_reports", ["run_name", "peer_id"])
    op.create_table(
        "peer_bans",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_name", sa.String(200), sa.ForeignKey("runs.name", name="fk_peer_bans_run_name_runs"),
                  nullable=False),
        sa.Column("peer_id", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("banned_by", sa.String(16), nullable=False),
        sa.Column("banned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_peer_bans"),
        sa.UniqueConstraint("run_name", "peer_id", name="uq_peer_bans_run_name_peer_id"),
    )


def downgrade() -> None:
    op.drop_table("peer_bans")
    op.drop_index("ix_peer_reports_run_name_peer_id", table_name="peer_reports")
    op.drop_table("peer_reports")
