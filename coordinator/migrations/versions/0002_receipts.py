"""Signed contribution receipts and DHT progress observations replace the unsigned contributions table.

Rows of ``contributions`` are carried over as receipts with id ``legacy-<id>``, no signature and status
``unverified``, so no recorded work is lost by the upgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("receipt_id", sa.String(64), nullable=False),
        sa.Column("run_name", sa.String(200), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("peer_id", sa.String(256), nullable=False),
        sa.Column("worker_id", sa.String(32), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("compute_seconds", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("ended_at", _utc(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=False),
        sa.Column("checked_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("receipt_id", name="pk_receipts"),
        sa.ForeignKeyConstraint(["run_name"], ["runs.name"], name="fk_receipts_run_name_runs"),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.worker_id"], name="fk_receipts_worker_id_workers"),
    )
    op.create_index("ix_receipts_run_name_shard", "receipts", ["run_name", "shard"])
    op.create_index("ix_receipts_run_name_received_at", "receipts", ["run_name", "received_at"])
    op.create_index("ix_receipts_peer_id_shard_ended_at", "receipts", ["peer_id", "shard", "ended_at"])
    op.create_index("ix_receipts_status", "receipts", ["status"])
    op.create_table(
        "progress_observations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_name", sa.String(200), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("peer_id", sa.String(256), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("samples_per_second", sa.Float(), nullable=False),
        sa.Column("samples_accumulated", sa.BigInteger(), nullable=False),
        sa.Column("key_bound", sa.Boolean(), nullable=False),
        sa.Column("first_seen", _utc(), nullable=False),
        sa.Column("last_seen", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_progress_observations"),
        sa.ForeignKeyConstraint(["run_name"], ["runs.name"], name="fk_progress_observations_run_name_runs"),
        sa.UniqueConstraint("run_name", "shard", "peer_id", "epoch",
                            name="uq_progress_observations_run_name_shard_peer_id_epoch"),
    )
    op.execute(
        "INSERT INTO receipts (receipt_id, run_name, shard, peer_id, worker_id, epoch, steps, samples, tokens, "
        "compute_seconds, loss, started_at, ended_at, received_at, payload, public_key, signature, status, "
        "status_reason) "
        "SELECT 'legacy-' || CAST(c.id AS VARCHAR(20)), c.run_name, c.shard, w.peer_id, c.worker_id, c.epoch, "
        "c.steps, c.samples, 0, c.compute_seconds, c.loss, c.created_at, c.created_at, c.created_at, '', '', '', "
        "'unverified', 'recorded before signed receipts' "
        "FROM contributions c JOIN workers w ON w.worker_id = c.worker_id"
    )
    op.drop_index("ix_contributions_run_name_created_at", table_name="contributions")
    op.drop_index("ix_contributions_run_name_shard", table_name="contributions")
    op.drop_table("contributions")


def downgrade() -> None:
    raise NotImplementedError("receipts cannot be turned back into unsigned contributions without losing data")
