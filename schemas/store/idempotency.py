"""Registrations made once per idempotency key: the task and the answer its caller got are
written in one transaction, so a retry with the same key is given that answer again and
never makes a second task, even when the retries race.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from schemas.errors import LedgerError, TaskConflict
from schemas.store.registration import NewTask, fold_in_waiting, insert_task, new_task_row
from schemas.store.rows import Task
from schemas.store.transactions import Database, UniqueRace
from schemas.tables import IDEMPOTENCY


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A caller's key (each caller has its own keys) and the SHA-256 of the request it came
    with the first time."""

    caller: str
    key: str
    request_sha256: str


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """An HTTP answer as first given; `replayed` when it is given again."""

    status: int
    body: bytes
    replayed: bool = False


class KeyReused(LedgerError):
    """The idempotency key came before with another request."""


async def answered(db: Database, key: IdempotencyKey) -> StoredAnswer | None:
    """The answer given the first time `key` came, None if it never did; `KeyReused` if it
    came with another request."""
    query = sa.select(IDEMPOTENCY.c.request_sha256, IDEMPOTENCY.c.status, IDEMPOTENCY.c.answer)
    query = query.where(IDEMPOTENCY.c.caller == key.caller, IDEMPOTENCY.c.key == key.key)
    async with db.read() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    if row.request_sha256 != key.request_sha256:
        raise KeyReused("this idempotency key was used with another request body")
    return StoredAnswer(int(row.status), row.answer.encode(), replayed=True)


async def register_once(
    db: Database,
    new: NewTask,
    key: IdempotencyKey,
    answer: Callable[[Task], tuple[int, bytes]],
) -> StoredAnswer:
    """Register `new` and keep `answer(task)` under `key`, in one transaction; or, when the
    key came before, the answer given then. Of racing requests with one key, one commits;
    the others break the key's unique constraint, roll back their task, and read its answer.
    The answer is the task as registered (what waited for its provider id is folded in
    after)."""
    first = await answered(db, key)
    if first is not None:
        return first
    now = db.clock()
    row = new_task_row(new, now)
    status, body = answer(Task(**row))
    try:
        async with db.write() as conn:
            await insert_task(conn, row, new.provider_task_id, now)
            await conn.execute(
                IDEMPOTENCY.insert().values(
                    caller=key.caller,
                    key=key.key,
                    request_sha256=key.request_sha256,
                    task_ref=row["ref"],
                    status=status,
                    answer=body.decode(),
                    created_at=now,
                )
            )
    except UniqueRace:
        first = await answered(db, key)
        if first is not None:
            return first
        raise TaskConflict(
            "another task already has this provider task id", provider=new.provider
        ) from None
    await fold_in_waiting(db, row, new.provider_task_id)
    return StoredAnswer(status, body)
