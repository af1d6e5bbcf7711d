"""the unfolded-delivery index's condition written without an IN list

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

SQLite evaluates a partial index's condition for every row written to its table, and
`outcome IN ('unrecognized', 'held', 'foreign')` builds a small ephemeral table each time
it runs: counted with callgrind, 30,000 of the 76,000 instructions a delivery's INSERT
cost, for an index that holds none of the deliveries folded in. The same condition as
three comparisons costs 1,400. The index is rebuilt with it, on both databases (one
definition, and the queries repeat it word for word so that each database matches it).
On PostgreSQL the build holds a write lock on `delivery` while it reads the table (a few
seconds a million rows).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OLD = sa.text("outcome IN ('unrecognized', 'held', 'foreign')")
NEW = sa.text("(outcome = 'unrecognized' OR outcome = 'held' OR outcome = 'foreign')")


def _rebuild(where: sa.TextClause) -> None:
    op.drop_index("ix_delivery_unfolded", table_name="delivery")
    op.create_index(
        "ix_delivery_unfolded",
        "delivery",
        ["task_ref"],
        unique=False,
        sqlite_where=where,
        postgresql_where=where,
    )


def upgrade() -> None:
    _rebuild(NEW)


def downgrade() -> None:
    _rebuild(OLD)
