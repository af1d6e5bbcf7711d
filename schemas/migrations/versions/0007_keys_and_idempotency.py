"""API keys with scopes, and idempotency keys of task registrations

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

`api_key` holds each key's id (its listed prefix), name, scope (admin, write, read),
optional owner, and the SHA-256 of its secret, never the secret; revoked keys stay.
`idempotency_key` holds, per caller and key, the hash of the first request and the answer
it got, unique on (caller, key) so that racing retries make one task; `taskledger db
prune` removes old ones by `created_at`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from schemas.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "idempotency_key",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("caller", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("task_ref", sa.String(length=40), sa.ForeignKey("task.ref"), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("caller", "key", name="uq_idempotency_caller_key"),
    )
    op.create_index("ix_idempotency_created_at", "idempotency_key", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_created_at", table_name="idempotency_key")
    op.drop_table("idempotency_key")
    op.drop_table("api_key")
