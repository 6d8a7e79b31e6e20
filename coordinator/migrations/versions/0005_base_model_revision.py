"""Runs pin their base model's revision: the commit a Hugging Face Hub model resolved to at launch, so a later
push to that model cannot change what a restarted coordinator or a new worker loads.

Runs launched before this revision (and runs on the built-in preset or a local folder) have none (NULL).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("base_model_revision", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("base_model_revision")
