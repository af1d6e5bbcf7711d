"""the archive: one artifact row per output of a succeeded task

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

A task whose success becomes authoritative gets one `pending` artifact per output in the
same transaction; the archiver copies each before its URL expires and records the outcome
(`archived`, `failed`, `missed`). A partial index on `expires_at` holds only the pending
rows, so the archiver's due query costs what is waiting, not the archive's size.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from schemas.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PENDING = sa.text("state = 'pending'")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "artifact",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("task_ref", sa.String(length=40), sa.ForeignKey("task.ref"), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=60), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("storage_key", sa.String(length=200), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("content_type", sa.String(length=100), nullable=True),
        sa.Column("source_host", sa.String(length=255), nullable=True),
        sa.Column("archived_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("task_ref", "name", name="uq_artifact_task_name"),
    )
    op.create_index(
        "ix_artifact_due",
        "artifact",
        ["expires_at"],
        unique=False,
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_artifact_due", table_name="artifact")
    op.drop_table("artifact")
