"""the ledger tables

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from schemas.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task",
        sa.Column("ref", sa.String(length=40), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("provider_task_id", sa.String(length=200), nullable=True),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("request", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("state_source", sa.String(length=16), nullable=False),
        sa.Column("authority", sa.Integer(), nullable=False),
        sa.Column("confirmed", sa.Boolean(), nullable=False),
        sa.Column("conflict", sa.Boolean(), nullable=False),
        sa.Column("recovered", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("last_event_at", UTCDateTime(), nullable=True),
        sa.Column("terminal_at", UTCDateTime(), nullable=True),
        sa.Column("next_poll_at", UTCDateTime(), nullable=True),
        sa.Column("poll_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("submission", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("ref"),
        sa.UniqueConstraint("provider", "provider_task_id", name="uq_task_provider_task_id"),
    )
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.create_index("ix_task_created_at", ["created_at"], unique=False)
        batch_op.create_index(
            "ix_task_due",
            ["provider", "next_poll_at"],
            unique=False,
            sqlite_where=sa.text("next_poll_at IS NOT NULL"),
            postgresql_where=sa.text("next_poll_at IS NOT NULL"),
        )

    op.create_table(
        "delivery",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("delivery_key", sa.String(length=200), nullable=False),
        sa.Column("task_ref", sa.String(length=40), nullable=True),
        sa.Column("provider_task_id", sa.String(length=200), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("auth", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("duplicate_count", sa.Integer(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_ref"],
            ["task.ref"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "delivery_key", name="uq_delivery_key"),
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.create_index("ix_delivery_task_ref", ["task_ref"], unique=False)
        batch_op.create_index(
            "ix_delivery_unmatched", ["provider", "provider_task_id"], unique=False
        )

    op.create_table(
        "observation",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_ref", sa.String(length=40), nullable=False),
        sa.Column("observed_at", UTCDateTime(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("progress", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_ref"],
            ["task.ref"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("observation", schema=None) as batch_op:
        batch_op.create_index("ix_observation_task_ref", ["task_ref"], unique=False)

    op.create_table(
        "transition",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_ref", sa.String(length=40), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.String(length=200), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_ref"],
            ["task.ref"],
        ),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("transition", schema=None) as batch_op:
        batch_op.create_index("ix_transition_task_ref", ["task_ref"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("transition", schema=None) as batch_op:
        batch_op.drop_index("ix_transition_task_ref")

    op.drop_table("transition")
    with op.batch_alter_table("observation", schema=None) as batch_op:
        batch_op.drop_index("ix_observation_task_ref")

    op.drop_table("observation")
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_unmatched")
        batch_op.drop_index("ix_delivery_task_ref")

    op.drop_table("delivery")
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_task_due",
            sqlite_where=sa.text("next_poll_at IS NOT NULL"),
            postgresql_where=sa.text("next_poll_at IS NOT NULL"),
        )
        batch_op.drop_index("ix_task_created_at")

    op.drop_table("task")
