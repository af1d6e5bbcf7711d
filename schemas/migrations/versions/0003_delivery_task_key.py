"""deliveries keyed by the provider's task id: one unique index instead of three

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

A delivery was unique by (provider, delivery_key), found by task through
`ix_delivery_task_ref` and, before its task was known, through `ix_delivery_unmatched`.
Every stored delivery dirtied a scattered leaf of the first two at each commit; on a ledger
of a million tasks those pages, copied back at each checkpoint, were what made ingest slow
down as the ledger grew. Now one unique index on (provider, provider_task_id,
delivery_key) does all three jobs: the provider's task id is in every delivery, and every
delivery a task holds carries its task's provider id.

The key's meaning is unchanged for what providers send: a token callback's key is the
digest of a body that names its task, and a webhook-id names one message of one task.

On SQLite the table is copied (the old unique constraint lives in its definition); on
PostgreSQL the new index is built under a write lock on `delivery`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UNMATCHED = sa.text("task_ref IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_unmatched", sqlite_where=UNMATCHED)
        batch_op.drop_index("ix_delivery_task_ref")
        batch_op.drop_constraint("uq_delivery_key", type_="unique")
        batch_op.alter_column(
            "provider_task_id", existing_type=sa.String(length=200), nullable=False
        )
        batch_op.create_unique_constraint(
            "uq_delivery_task_key", ["provider", "provider_task_id", "delivery_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_constraint("uq_delivery_task_key", type_="unique")
        batch_op.alter_column(
            "provider_task_id", existing_type=sa.String(length=200), nullable=True
        )
        batch_op.create_unique_constraint("uq_delivery_key", ["provider", "delivery_key"])
        batch_op.create_index("ix_delivery_task_ref", ["task_ref"], unique=False)
        batch_op.create_index(
            "ix_delivery_unmatched",
            ["provider", "provider_task_id"],
            unique=False,
            sqlite_where=UNMATCHED,
            postgresql_where=UNMATCHED,
        )
