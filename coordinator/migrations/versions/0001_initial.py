"""Initial schema: runs, workers, contributions, adapter_versions.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("spec_hash", sa.String(128), nullable=False),
        sa.Column("base_model_fingerprint", sa.String(256), nullable=False),
        sa.Column("dataset_digest", sa.String(256), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("name", name="uq_runs_name"),
    )
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(32), nullable=False),
        sa.Column("run_name", sa.String(200), nullable=False),
        sa.Column("peer_id", sa.String(256), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("shards_json", sa.Text(), nullable=False),
        sa.Column("data_slice", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(128), nullable=False),
        sa.Column("joined_at", _utc(), nullable=False),
        sa.Column("last_seen", _utc(), nullable=False),
        sa.Column("has_left", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name="pk_workers"),
        sa.ForeignKeyConstraint(["run_name"], ["runs.name"], name="fk_workers_run_name_runs"),
    )
    op.create_index("ix_workers_run_name_last_seen", "workers", ["run_name", "last_seen"])
    op.create_table(
        "contributions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("worker_id", sa.String(32), nullable=False),
        sa.Column("run_name", sa.String(200), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("compute_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_contributions"),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.worker_id"], name="fk_contributions_worker_id_workers"),
        sa.ForeignKeyConstraint(["run_name"], ["runs.name"], name="fk_contributions_run_name_runs"),
    )
    op.create_index("ix_contributions_run_name_shard", "contributions", ["run_name", "shard"])
    op.create_index("ix_contributions_run_name_created_at", "contributions", ["run_name", "created_at"])
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("eval_loss", sa.Float(), nullable=False),
        sa.Column("base_eval_loss", sa.Float(), nullable=False),
        sa.Column("contributors_json", sa.Text(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_adapter_versions"),
        sa.ForeignKeyConstraint(["run_name"], ["runs.name"], name="fk_adapter_versions_run_name_runs"),
        sa.UniqueConstraint("run_name", "version", name="uq_adapter_versions_run_name_version"),
    )


def downgrade() -> None:
    op.drop_table("adapter_versions")
    op.drop_index("ix_contributions_run_name_created_at", table_name="contributions")
    op.drop_index("ix_contributions_run_name_shard", table_name="contributions")
    op.drop_table("contributions")
    op.drop_index("ix_workers_run_name_last_seen", table_name="workers")
    op.drop_table("workers")
    op.drop_table("runs")
