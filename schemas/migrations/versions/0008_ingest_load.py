"""PostgreSQL: one call for what an ingest batch reads under its locks

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

`taskledger_ingest_load` takes a batch's provider-id advisory locks (in the order given),
then locks its tasks (by ref, or by provider and provider task id) in ref order, then
reads which of its deliveries are stored already, and returns the tasks and those
deliveries as JSON. Three statements, one round trip: each statement of a function runs
on a snapshot of its own, so the tasks read are those committed once the id locks are
held, and the deliveries those committed once the task rows are (see
`schemas.store.pg_ingest`). Whole rows: a column added later needs no new function.
Nothing on SQLite, which runs one writer at a time.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CREATE = """
CREATE FUNCTION taskledger_ingest_load(
    lock_namespace integer,
    lock_keys integer[],
    refs text[],
    providers text[],
    task_ids text[],
    key_providers text[],
    key_task_ids text[],
    key_keys text[],
    OUT tasks json,
    OUT seen json
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_namespace, w.k)
    FROM unnest(lock_keys) WITH ORDINALITY AS w(k, i) ORDER BY w.i;
    SELECT json_agg(locked ORDER BY locked.ref) INTO tasks FROM (
        SELECT * FROM task WHERE ref = ANY(refs || ARRAY(
            SELECT t.ref FROM unnest(providers, task_ids) AS w(p, i)
            JOIN task AS t ON t.provider = w.p AND t.provider_task_id = w.i
        )) ORDER BY ref FOR UPDATE
    ) AS locked;
    SELECT json_agg(json_build_array(
        d.provider, d.provider_task_id, d.delivery_key, d.task_ref, d.state
    )) INTO seen
    FROM unnest(key_providers, key_task_ids, key_keys) AS w(p, t, k)
    JOIN delivery AS d ON d.provider = w.p AND d.provider_task_id = w.t AND d.delivery_key = w.k;
END
$$
"""
DROP = (
    "DROP FUNCTION taskledger_ingest_load"
    "(integer, integer[], text[], text[], text[], text[], text[], text[])"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP)
