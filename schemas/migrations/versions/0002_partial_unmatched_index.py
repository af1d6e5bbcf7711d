"""unmatched deliveries indexed alone

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

`ix_delivery_unmatched` exists to find the deliveries that came before their task was
known (task_ref IS NULL). Indexing every delivery cost one more index insert, and one
more dirty page a commit, for each of the matched ones, which are nearly all of them.
On PostgreSQL the rebuild holds a write lock on `delivery` while it runs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNMATCHED = sa.text("task_ref IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_unmatched")
        batch_op.create_index(
            "ix_delivery_unmatched",
            ["provider", "provider_task_id"],
            unique=False,
            sqlite_where=UNMATCHED,
            postgresql_where=UNMATCHED,
        )


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_delivery_unmatched", sqlite_where=UNMATCHED, postgresql_where=UNMATCHED
        )
        batch_op.create_index(
            "ix_delivery_unmatched", ["provider", "provider_task_id"], unique=False
        )
