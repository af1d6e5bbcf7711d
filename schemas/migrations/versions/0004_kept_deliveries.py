"""every authenticated delivery is kept: reasons, attention, and the unfolded ones indexed

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

A delivery that could not be folded in (its body unreadable, held until its task's provider
id is settled, or naming an id its task turned out not to have) is kept with a `reason`; a
small partial index finds them by task, for the timeline, `PATCH`, the submit answer and
`taskledger db refold`. It holds only those rows: the deliveries that are folded in, nearly
all of them, dirty no page of it. A task the operator should look at says why in
`attention`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UNFOLDED = sa.text("outcome IN ('unrecognized', 'held', 'foreign')")


def upgrade() -> None:
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attention", sa.String(length=200), nullable=True))
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.String(length=200), nullable=True))
        batch_op.create_index(
            "ix_delivery_unfolded",
            ["task_ref"],
            unique=False,
            sqlite_where=UNFOLDED,
            postgresql_where=UNFOLDED,
        )


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_delivery_unfolded", sqlite_where=UNFOLDED, postgresql_where=UNFOLDED
        )
        batch_op.drop_column("reason")
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.drop_column("attention")
