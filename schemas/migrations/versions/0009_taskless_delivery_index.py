"""deliveries with no task indexed by when they came

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

`GET /v1/deliveries` lists the deliveries kept with no task, newest first: without this
index it read the whole delivery table. Partial: the matched deliveries, nearly all of
them, are not in it and cost an ingest nothing. On PostgreSQL the build holds a write lock
on `delivery` while it runs (a few seconds a million rows).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TASKLESS = sa.text("task_ref IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_delivery_taskless",
        "delivery",
        ["received_at", "id"],
        unique=False,
        sqlite_where=TASKLESS,
        postgresql_where=TASKLESS,
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_taskless", table_name="delivery")
