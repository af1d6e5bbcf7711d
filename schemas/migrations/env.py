"""Alembic environment: runs migrations on the connection `schemas.migrate` hands over."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from schemas.tables import METADATA


def run_on(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `taskledger db upgrade`")
run_on(connection)
