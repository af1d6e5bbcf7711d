"""The one write path: a batch of evidence loaded, folded in memory and written in one
transaction, through one of three ingest sessions (SQLAlchemy Core here, raw `sqlite3` in
`schemas.store.sqlite_ingest`, raw asyncpg in `schemas.store.pg_ingest`), all driven by
the same steps; a lost unique race retries the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Mapping, Sequence
from dataclasses import field
from datetime import datetime
from typing import Any, Protocol, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from schemas.errors import ConstraintViolation
from schemas.fold import Fold, TaskWork, Writes
from schemas.ledger import Delivery, DeliveryId, Evidence, Reader, Stored, Submission
from schemas.records import record
from schemas.states import Outcome
from schemas.store.locks import lock_task_ids, order_transitions
from schemas.store.outbox import message_rows
from schemas.store.pg_ingest import PgSession
from schemas.store.sqlite_ingest import STORED_DELIVERIES, LedgerWriter, keys_json
from schemas.store.transactions import Database, UniqueRace, driver_write
from schemas.tables import (
    ARTIFACT,
    DELIVERY,
    MESSAGE,
    OBSERVATION,
    TASK,
    TRANSITION,
    UNFOLDED_WHERE,
)

INGEST_ATTEMPTS = 3
# After a lost unique race a batch waits this many seconds, times its attempt number, before
# trying again: long enough for the winner to commit, short against a request's deadline.
RACE_BACKOFF_SECONDS = 0.005


async def ingest(
    db: Database, sqlite: LedgerWriter | None, evidence: Sequence[Evidence]
) -> list[Stored]:
    """Store and merge a batch in one transaction (through `sqlite` when the ledger is a
    SQLite file); a lost unique race retries the batch."""
    items = list(evidence)
    for attempt in range(1, INGEST_ATTEMPTS + 1):
        try:
            return await _ingest_once(db, sqlite, items, db.clock())
        except UniqueRace:
            if attempt == INGEST_ATTEMPTS:
                # Not the database's health: something in this batch breaks a unique key.
                raise ConstraintViolation("the batch broke a unique key on every try") from None
            await asyncio.sleep(RACE_BACKOFF_SECONDS * attempt)
    raise AssertionError("unreachable")


async def _ingest_once(
    db: Database, sqlite: LedgerWriter | None, items: list[Evidence], now: datetime
) -> list[Stored]:
    readers = db.readers
    if sqlite is not None:
        return await sqlite.run(lambda session: fold_batch(session, items, now, readers))
    if db.locks_rows:
        keys = {item.identity for item in items if isinstance(item, Delivery)}
        async with driver_write(db.engine) as conn:
            session = PgSession(conn, TASK_FIELDS, keys)
            return await fold_batch_async(session, items, now, readers)
    async with db.write() as conn:
        return await conn.run_sync(lambda sync: fold_batch(CoreSession(sync), items, now, readers))


class IngestSession(Protocol):
    """What an ingest asks of the database, inside its one transaction."""

    def tasks(
        self, refs: set[str], pairs: set[tuple[str, str]], *, lock: bool = True
    ) -> list[dict[str, Any]]: ...

    def deliveries(self, keys: set[DeliveryId]) -> dict[DeliveryId, dict[str, Any]]: ...

    def lock_ids(self, task_ids: set[str]) -> None: ...

    def held(self, refs: set[str]) -> dict[str, list[dict[str, Any]]]: ...

    def unmatched(
        self, pairs: set[tuple[str, str]]
    ) -> dict[tuple[str, str], list[dict[str, Any]]]: ...

    def flush(self, writes: Writes, tasks: list[TaskWork], now: datetime) -> None: ...


@record
class _Step:
    """One call of an ingest session's: the method's name and its arguments."""

    method: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def fold_batch(
    session: IngestSession, items: list[Evidence], now: datetime, readers: Mapping[str, Reader]
) -> list[Stored]:
    """Load what the batch touches, fold it in memory, write every decision (`_steps`)."""
    steps = _steps(items, now, readers)
    step, done = _advance(steps, None)
    while step is not None:
        step, done = _advance(steps, getattr(session, step.method)(*step.args, **step.kwargs))
    return done


async def fold_batch_async(
    session: Any, items: list[Evidence], now: datetime, readers: Mapping[str, Reader]
) -> list[Stored]:
    """`fold_batch` on a session whose methods are coroutines (`PgSession`)."""
    steps = _steps(items, now, readers)
    step, done = _advance(steps, None)
    while step is not None:
        answer = await getattr(session, step.method)(*step.args, **step.kwargs)
        step, done = _advance(steps, answer)
    return done


def _advance(
    steps: Generator[_Step, Any, list[Stored]], answer: Any
) -> tuple[_Step | None, list[Stored]]:
    """The next call the ingest needs, given the last one's answer; or None and its results."""
    try:
        return steps.send(answer), []
    except StopIteration as finished:
        return None, cast(list[Stored], finished.value)


def _steps(
    items: list[Evidence], now: datetime, readers: Mapping[str, Reader]
) -> Generator[_Step, Any, list[Stored]]:
    """An ingest as the calls it makes of its session, each answered with what the call
    returned: one order of locks and reads on every database, whether the session's
    methods are plain calls or coroutines."""
    refs = {item.task_ref for item in items if item.task_ref is not None}
    pairs = {
        (item.provider, item.provider_task_id)
        for item in items
        if isinstance(item, Delivery) and item.task_ref is None and item.provider_task_id
    }
    keys = {item.identity for item in items if isinstance(item, Delivery)}
    yield _Step("lock_ids", ({task_id for _, task_id in pairs} | _answer_ids(items),))
    # Tasks first, in ref order (one global lock order on PostgreSQL: no deadlocks).
    tasks: list[dict[str, Any]] = yield _Step("tasks", (refs, pairs))
    submitted = {item.task_ref for item in items if isinstance(item, Submission)}
    held = (yield _Step("held", (submitted,))) if submitted else {}
    answered = _answered_ids(items, tasks)
    unmatched = (yield _Step("unmatched", (answered,))) if answered else {}
    proposed = _proposed_ids(items, tasks, held)
    if proposed:
        # Ids proposed to tasks without one: whoever holds them already must be known,
        # so that no id is adopted twice (read, not locked: they are not written).
        loaded = {row["ref"] for row in tasks}
        holders = yield _Step("tasks", (set(), proposed), {"lock": False})
        tasks += [row for row in holders if row["ref"] not in loaded]
    existing = yield _Step("deliveries", (keys,))
    fold = Fold(tasks, existing, now, held=held, unmatched=unmatched, readers=readers)
    results = [fold.apply(item) for item in items]
    fold.finish()
    yield _Step("flush", (fold.writes, fold.changed_tasks(), now))
    return results


def _answer_ids(items: list[Evidence]) -> set[str]:
    return {
        item.observation.provider_task_id
        for item in items
        if isinstance(item, Submission) and item.observation is not None
    }


def _answered_ids(items: list[Evidence], tasks: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(provider, id) pairs that submit answers give to tasks without an id yet: signed
    events may have come for them before the answer was recorded."""
    open_tasks = {row["ref"]: row["provider"] for row in tasks if row["provider_task_id"] is None}
    return {
        (open_tasks[item.task_ref], item.observation.provider_task_id)
        for item in items
        if isinstance(item, Submission)
        and item.observation is not None
        and item.task_ref in open_tasks
    }


def _proposed_ids(
    items: list[Evidence], tasks: list[dict[str, Any]], held: Mapping[str, list[dict[str, Any]]]
) -> set[tuple[str, str]]:
    """(provider, id) pairs that callbacks, submit answers or held deliveries propose to
    tasks that have no provider id yet."""
    open_tasks = {row["ref"]: row["provider"] for row in tasks if row["provider_task_id"] is None}
    proposed: set[tuple[str, str]] = set()
    for item in items:
        provider = open_tasks.get(item.task_ref or "")
        if provider is None:
            continue
        if isinstance(item, Delivery) and item.provider_task_id:
            proposed.add((provider, item.provider_task_id))
        elif isinstance(item, Submission) and item.observation is not None:
            proposed.add((provider, item.observation.provider_task_id))
    for ref, rows in held.items():
        if ref in open_tasks:
            proposed |= {(open_tasks[ref], row["provider_task_id"]) for row in rows}
    return proposed


class CoreSession:
    """The ingest's statements through SQLAlchemy Core: PostgreSQL's ingest, and both
    databases' refold and fold-in of waiting deliveries."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self._locks_rows = conn.dialect.name == "postgresql"

    def tasks(
        self, refs: set[str], pairs: set[tuple[str, str]], *, lock: bool = True
    ) -> list[dict[str, Any]]:
        """The batch's tasks, locked in ref order on PostgreSQL (unless `lock` is false)."""
        if pairs:
            refs = refs | _refs_of(self._conn, pairs)
        if not refs:
            return []
        query = sa.select(TASK).where(_one_of(self._conn, TASK.c.ref, refs)).order_by(TASK.c.ref)
        if self._locks_rows and lock:
            query = query.with_for_update()
        return [dict(row) for row in self._conn.execute(query).mappings()]

    def lock_ids(self, task_ids: set[str]) -> None:
        lock_task_ids(self._conn, task_ids)

    def held(self, refs: set[str]) -> dict[str, list[dict[str, Any]]]:
        """The deliveries held for these tasks until their provider id is settled."""
        query = (
            sa.select(DELIVERY)
            .where(_one_of(self._conn, DELIVERY.c.task_ref, refs))
            .where(UNFOLDED, DELIVERY.c.outcome == Outcome.HELD.value)
            .order_by(DELIVERY.c.id)
        )
        found: dict[str, list[dict[str, Any]]] = {}
        for row in self._conn.execute(query).mappings():
            found.setdefault(row["task_ref"], []).append(dict(row))
        return found

    def unmatched(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Deliveries kept for these (provider, id) pairs before any task had the id."""
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for provider, task_id in sorted(pairs):
            query = (
                sa.select(DELIVERY)
                .where(DELIVERY.c.provider == provider)
                .where(DELIVERY.c.provider_task_id == task_id)
                .where(DELIVERY.c.task_ref.is_(None))
                .order_by(DELIVERY.c.id)
            )
            rows = [dict(row) for row in self._conn.execute(query).mappings()]
            if rows:
                found[provider, task_id] = rows
        return found

    def deliveries(self, keys: set[DeliveryId]) -> dict[DeliveryId, dict[str, Any]]:
        if not keys:
            return {}
        rows = [
            dict(row) for row in self._conn.execute(_stored_deliveries(self._conn, keys)).mappings()
        ]
        return {_delivery_id(row): row for row in rows}

    def flush(self, writes: Writes, tasks: list[TaskWork], now: datetime) -> None:
        conn = self._conn
        if writes.transitions:
            order_transitions(conn)
        try:
            # Keys in key order: batches committing at once then wait on each other's new
            # or counted keys in one order, never in a cycle.
            _insert_returning_ids(conn, DELIVERY, sorted(writes.deliveries, key=_delivery_id))
            _insert_returning_ids(conn, OBSERVATION, writes.observations)
            for statement, params in _delivery_updates(writes.delivery_updates):
                conn.execute(statement, params)
            if writes.duplicates:
                conn.execute(
                    _COUNT_DUPLICATE,
                    [
                        {"k_provider": p, "k_task_id": t, "k_key": k, "k_count": n, "k_now": now}
                        for (p, t, k), n in sorted(writes.duplicates.items())
                    ],
                )
            if tasks:
                conn.execute(_UPDATE_TASK, [_task_params(work.row) for work in tasks])
            if writes.transitions:
                _insert_transitions(conn, writes)
            if writes.messages:
                conn.execute(MESSAGE.insert(), message_rows(writes.messages))
            if writes.artifacts:
                conn.execute(_new_artifacts(conn), writes.artifacts)
        except IntegrityError as exc:
            raise UniqueRace() from exc


def _delivery_id(row: dict[str, Any]) -> DeliveryId:
    return row["provider"], row["provider_task_id"], row["delivery_key"]


def _insert_returning_ids(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    statement = table.insert().returning(table.c.id, sort_by_parameter_order=True)
    params = [{k: v for k, v in row.items() if k != "id"} for row in rows]
    for row, (row_id,) in zip(rows, conn.execute(statement, params), strict=True):
        row["id"] = row_id


TASK_FIELDS = (
    "submission",
    "attention",
    "provider_task_id",
    "state",
    "progress",
    "result",
    "state_source",
    "authority",
    "confirmed",
    "conflict",
    "recovered",
    "version",
    "updated_at",
    "last_event_at",
    "terminal_at",
    "next_poll_at",
    "poll_attempts",
    "lease_owner",
    "lease_until",
)
_UPDATE_TASK = (
    TASK.update()
    .where(TASK.c.ref == sa.bindparam("t_ref"))
    .values({name: sa.bindparam("t_" + name) for name in TASK_FIELDS})
)
# The partial index's own condition, word for word, so that both databases use it.
UNFOLDED = sa.text(UNFOLDED_WHERE)


def _delivery_updates(
    updates: list[dict[str, Any]],
) -> list[tuple[sa.Update, list[dict[str, Any]]]]:
    """Stored deliveries folded in again: one statement for each set of changed columns."""
    by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in updates:
        shape = tuple(sorted(name for name in change if name != "id"))
        by_shape.setdefault(shape, []).append(change)
    return [
        (
            DELIVERY.update()
            .where(DELIVERY.c.id == sa.bindparam("d_id"))
            .values({name: sa.bindparam("d_" + name) for name in shape}),
            [{"d_" + name: value for name, value in change.items()} for change in changes],
        )
        for shape, changes in by_shape.items()
    ]


_COUNT_DUPLICATE = (
    DELIVERY.update()
    .where(DELIVERY.c.provider == sa.bindparam("k_provider"))
    .where(DELIVERY.c.provider_task_id == sa.bindparam("k_task_id"))
    .where(DELIVERY.c.delivery_key == sa.bindparam("k_key"))
    .values(
        duplicate_count=DELIVERY.c.duplicate_count + sa.bindparam("k_count"),
        last_seen_at=sa.bindparam("k_now"),
    )
)


def _pair_in(
    conn: sa.Connection,
    first: sa.ColumnElement[Any],
    second: sa.ColumnElement[Any],
    pairs: set[tuple[str, str]],
) -> list[sa.ColumnElement[bool]]:
    """`first IN (...) AND second IN (...)`: both databases walk the two-column index.

    A row-value `(a, b) IN (VALUES ...)` reads the same, but SQLite answers it by
    scanning the whole table: ingest then slowed down as the ledger grew. The
    caller drops the few cross-product rows that are not among `pairs`.
    """
    return [
        _one_of(conn, first, {a for a, _ in pairs}),
        _one_of(conn, second, {b for _, b in pairs}),
    ]


def _one_of(
    conn: sa.Connection, column: sa.ColumnElement[Any], values: set[str]
) -> sa.ColumnElement[bool]:
    """`column IN (...)`; on PostgreSQL `column = ANY($1)`, one statement text whatever the
    number of values, so the server plans it once per connection rather than once for
    every batch size it meets."""
    if conn.dialect.name != "postgresql":
        return column.in_(values)
    array = sa.bindparam(None, sorted(values), type_=postgresql.ARRAY(sa.String()), unique=True)
    return column == sa.any_(array)


_DELIVERY_SEEN = (
    DELIVERY.c.provider,
    DELIVERY.c.provider_task_id,
    DELIVERY.c.delivery_key,
    DELIVERY.c.task_ref,
    DELIVERY.c.state,
)


def _stored_deliveries(conn: sa.Connection, keys: set[DeliveryId]) -> sa.Executable:
    """The stored deliveries among `keys`, one index probe a key. On PostgreSQL the keys
    arrive as three arrays (one statement text for any number of them) and each row of
    their `unnest` probes the unique index; SQLite walks a JSON array of them."""
    if conn.dialect.name != "postgresql":
        return sa.text(STORED_DELIVERIES).bindparams(keys=keys_json(keys))
    columns = DELIVERY.c.provider, DELIVERY.c.provider_task_id, DELIVERY.c.delivery_key
    arrays = [
        sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.String()))
        for values in zip(*keys, strict=True)
    ]
    wanted = (
        sa.func.unnest(*arrays)
        .table_valued("provider", "provider_task_id", "delivery_key")
        .render_derived(name="wanted")
    )
    on = sa.and_(*(column == wanted.c[column.name] for column in columns))
    return sa.select(*_DELIVERY_SEEN).select_from(DELIVERY.join(wanted, on))


def _refs_of(conn: sa.Connection, pairs: set[tuple[str, str]]) -> set[str]:
    """The refs of the tasks known by (provider, provider task id)."""
    query = sa.select(TASK.c.ref, TASK.c.provider, TASK.c.provider_task_id).where(
        *_pair_in(conn, TASK.c.provider, TASK.c.provider_task_id, pairs)
    )
    return {ref for ref, provider, task_id in conn.execute(query) if (provider, task_id) in pairs}


def _new_artifacts(conn: sa.Connection) -> sa.Executable:
    """Artifacts planned again (a success settled twice) are known by name: kept as they are."""
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    return insert(ARTIFACT).on_conflict_do_nothing(index_elements=["task_ref", "name"])


def _insert_transitions(conn: sa.Connection, writes: Writes) -> None:
    """The batch's transitions, each told the `seq` it was given (for its event)."""
    statement = TRANSITION.insert().returning(TRANSITION.c.seq, sort_by_parameter_order=True)
    found = conn.execute(statement, _transition_params(writes))
    for transition, (seq,) in zip(writes.transitions, found, strict=True):
        transition.seq = seq


def _transition_params(writes: Writes) -> list[dict[str, Any]]:
    return [
        {
            "task_ref": t.task_ref,
            "from_state": t.from_state,
            "to_state": t.to_state,
            "source": t.source,
            "source_id": str(t.source_row["id"]) if t.source_row else None,
            "at": t.at,
        }
        for t in writes.transitions
    ]


def _task_params(row: dict[str, Any]) -> dict[str, Any]:
    params = {"t_" + name: row[name] for name in TASK_FIELDS}
    params["t_ref"] = row["ref"]
    return params
