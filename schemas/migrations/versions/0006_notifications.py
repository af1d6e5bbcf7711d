"""notifications: endpoints, the outbox of authoritative changes, dispatches and attempts

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

A change that should tell the product is written to `message` in the transaction that made
it (the outbox). The relay fans each message out to the endpoints whose filters match, one
`dispatch` per endpoint with its own retry schedule, and records every try in
`dispatch_attempt`. Two partial indexes hold only the work waiting: messages not fanned
out, dispatches pending.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from schemas.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UNSENT = sa.text("fanned_out = false")
DUE = sa.text("state = 'pending'")


def upgrade() -> None:
    op.create_table(
        "endpoint",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("providers", sa.JSON(), nullable=True),
        sa.Column("owners", sa.JSON(), nullable=True),
        sa.Column("event_types", sa.JSON(), nullable=True),
        sa.Column("include_unconfirmed", sa.Boolean(), nullable=False),
        sa.Column("secrets", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=200), nullable=True),
        sa.Column("disabled_at", UTCDateTime(), nullable=True),
        sa.Column("failing_since", UTCDateTime(), nullable=True),
        sa.Column("last_success_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "message",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("msg_id", sa.String(length=40), nullable=False, unique=True),
        sa.Column("task_ref", sa.String(length=40), sa.ForeignKey("task.ref"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("unconfirmed", sa.Boolean(), nullable=False),
        sa.Column("fanned_out", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "ix_message_unsent", "message", ["id"], sqlite_where=UNSENT, postgresql_where=UNSENT
    )
    op.create_index("ix_message_task_ref", "message", ["task_ref"])
    op.create_table(
        "dispatch",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("message_id", BigId, sa.ForeignKey("message.id"), nullable=False),
        sa.Column(
            "endpoint_id", sa.String(length=40), sa.ForeignKey("endpoint.id"), nullable=False
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("message_id", "endpoint_id", name="uq_dispatch_message_endpoint"),
    )
    op.create_index(
        "ix_dispatch_due", "dispatch", ["next_attempt_at"], sqlite_where=DUE, postgresql_where=DUE
    )
    op.create_index("ix_dispatch_endpoint", "dispatch", ["endpoint_id", "created_at"])
    op.create_table(
        "dispatch_attempt",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("dispatch_id", BigId, sa.ForeignKey("dispatch.id"), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("answer", sa.String(length=500), nullable=True),
        sa.Column("error", sa.String(length=200), nullable=True),
    )
    op.create_index("ix_dispatch_attempt_dispatch", "dispatch_attempt", ["dispatch_id"])


def downgrade() -> None:
    op.drop_index("ix_dispatch_attempt_dispatch", table_name="dispatch_attempt")
    op.drop_table("dispatch_attempt")
    op.drop_index("ix_dispatch_endpoint", table_name="dispatch")
    op.drop_index("ix_dispatch_due", table_name="dispatch")
    op.drop_table("dispatch")
    op.drop_index("ix_message_task_ref", table_name="message")
    op.drop_index("ix_message_unsent", table_name="message")
    op.drop_table("message")
    op.drop_table("endpoint")
