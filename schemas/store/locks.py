"""PostgreSQL's advisory locks: the change feed's horizon, and writers meeting over
one provider task id. SQLite runs one writer at a time, so there they do nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa

FEED_LOCK_KEY = 0x7A5C_1ED6  # "taskledger" change feed, for pg_advisory_xact_lock
# The two-key advisory locks (a key space apart from the one-key feed lock): provider ids,
# and the tasks whose outputs a transaction settles.
TASK_ID_LOCK_NAMESPACE = 0x7A5C_1D00
ARCHIVE_LOCK_NAMESPACE = 0x7A5C_1D01
LOCK_KEYS = sa.text(
    "SELECT pg_advisory_xact_lock(:ns, k) FROM (SELECT unnest(CAST(:keys AS integer[])) AS k "
    "ORDER BY k) AS wanted"
)


def order_transitions(conn: sa.Connection) -> None:
    """Announce that this transaction appends transitions, so a change feed reader never
    skips a late commit (`feed_horizon`).

    PostgreSQL hands out sequence numbers at insert time, not at commit: seq 11 can become
    visible before seq 10, and a reader at `after=11` would never see 10. Every writer
    that appends transitions holds this lock, shared, from before it takes a `seq` until
    it ends, so writers never wait for each other (their commits, and so their fsyncs,
    overlap). A reader takes it exclusively for an instant (`feed_horizon`) to learn a
    `seq` below which every transaction has ended; it holds no other lock meanwhile, so
    no lock-order cycle can pass through it. SQLite already runs one writer at a time.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": FEED_LOCK_KEY})


# The exclusive feed lock, then (only once it is held) the last `seq` handed out. With the
# sequence's cache of 1, nothing at or below it is still to be handed out.
FEED_HORIZON = (
    "WITH feed AS MATERIALIZED (SELECT pg_advisory_xact_lock(:key)) "
    "SELECT pg_sequence_last_value(pg_get_serial_sequence('transition', 'seq')) "
    "WHERE EXISTS (SELECT FROM feed)"
)


def lock_task_ids(conn: sa.Connection, task_ids: set[str]) -> None:
    """Serialize, per provider task id, the writers that may meet over it on PostgreSQL:
    one keeping a delivery for an id no task has yet (unmatched), and one giving a task
    that id (the submit answer, `PATCH`, a registration). Without it each could miss
    the other's uncommitted row and leave the delivery unmatched for good. Taken before
    any row lock, in key order (no cycles); SQLite runs one writer at a time already."""
    if conn.dialect.name == "postgresql" and task_ids:
        conn.execute(LOCK_KEYS, {"ns": TASK_ID_LOCK_NAMESPACE, "keys": id_keys(task_ids)})


async def take_turns_settling(conn: Any, task_ref: str) -> None:
    """On PostgreSQL, the transactions settling one task's outputs take turns from here to
    their commit: two settling its last two at once would each see the other's as still
    pending, and neither would announce the task archived. A transaction settling several
    tasks' takes them in key order (`id_keys`), so no two wait on each other in a cycle."""
    if conn.dialect.name == "postgresql":
        await conn.execute(LOCK_KEYS, {"ns": ARCHIVE_LOCK_NAMESPACE, "keys": id_keys({task_ref})})


def id_keys(task_ids: set[str]) -> list[int]:
    """Each id as a 32-bit lock key, sorted and distinct (a collision only serializes)."""
    keys = {
        int.from_bytes(hashlib.blake2b(i.encode(), digest_size=4).digest(), "big", signed=True)
        for i in task_ids
    }
    return sorted(keys)
