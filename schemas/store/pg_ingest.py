"""The store's ingest path on PostgreSQL: the batch's statements on the pool's own asyncpg
connection, rows passed as one JSON parameter a table (`_Columns`).

Profiled under load, SQLAlchemy's per-statement work (compiling and caching, bind and
result processors, the greenlet hop of `run_sync`) took more of the receiver's CPU than
the HTTP path, and a batch made a round trip for each of its ten or so statements. Here
a batch makes at most these, each one statement whatever its size, and skips those with
nothing to do:

1. its locks and reads, in one call of `taskledger_ingest_load` (migration 0008), whose
   statements each see what was committed before they ran: the provider-id advisory
   locks (when the batch may keep an unmatched delivery or give a task its id), then
   its tasks, found by ref or by (provider, provider task id) and locked in ref order,
   then its deliveries already stored (as committed by any writer that held one of
   those task rows while this one waited for it);
2. rarely, the reads of submit answers and of tasks without a provider id yet (the
   deliveries held or unmatched for them, and who holds the ids they are proposed);
3. when it appends transitions: the change feed's lock, and its `seq` numbers and new
   rows' ids handed out under that lock;
4. every write in one statement: a data-modifying CTE for each table, rows from
   `json_to_recordset` of one JSON array (stored deliveries folded in again, which are rare, are
   updated just before it, one statement per set of changed columns).

Every value is bound; the statements are assembled only from the tables' own column
names and types.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from schemas.fold import TaskWork, Writes
from schemas.ledger import DeliveryId
from schemas.store.locks import FEED_LOCK_KEY, TASK_ID_LOCK_NAMESPACE, id_keys
from schemas.store.outbox import message_rows
from schemas.tables import (
    ARTIFACT,
    DELIVERY,
    MESSAGE,
    OBSERVATION,
    TASK,
    TRANSITION,
    UNFOLDED_WHERE,
    UTCDateTime,
)

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
_QUOTE = _DIALECT.identifier_preparer.quote


def _encode_json(value: Any) -> str:
    """A parameter's JSON text: times as RFC 3339 (naive ones as UTC), bytes refused."""
    return orjson.dumps(value, option=orjson.OPT_NAIVE_UTC).decode()


def _decode_json(value: Any) -> Any:
    """JSON as read: text, unless the connection's codec (SQLAlchemy's sets one) parsed it."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _record_type(kind: Any) -> str:
    """A column's type as `json_to_recordset` reads it: JSON as JSON, the rest as stored."""
    return "json" if isinstance(kind, sa.JSON) else str(kind.compile(dialect=_DIALECT))


class _Columns:
    """Some columns of a table: how to read them into dicts, and how to pass many rows of
    them as a few parameters (`source` turns them back into rows).

    The rows travel as one JSON array of objects (bytes beside it, one array a column, as
    JSON has none), not as one array a column: asyncpg checks each element of an array it
    encodes for being an array itself (an `isinstance` of an abstract class) and converts
    each `datetime` in Python, 0.5 µs an element and 1.2 µs a time, where orjson writes the
    whole batch in a few µs. A batch of 16 callbacks passes about 600 elements.
    """

    def __init__(self, table: sa.Table, names: Sequence[str]) -> None:
        self.table = _QUOTE(table.name)
        self.names = tuple(names)
        self.quoted = [_QUOTE(name) for name in names]
        self.select = ", ".join(self.quoted)
        kinds = dict(zip(names, (table.c[name].type for name in names), strict=True))
        self._json = [i for i, kind in enumerate(kinds.values()) if isinstance(kind, sa.JSON)]
        self._bytes = tuple(name for name in names if isinstance(kinds[name], sa.LargeBinary))
        self._fields = tuple(name for name in names if name not in self._bytes)
        self._definitions = ", ".join(
            f"{_QUOTE(name)} {_record_type(kinds[name])}" for name in self._fields
        )
        # A JSON value of null comes out of the records as SQL NULL: stored as JSON null,
        # as SQLAlchemy stores None.
        self.value_list = [
            f"coalesce(w.{q}, 'null'::json)" if isinstance(kind, sa.JSON) else f"w.{q}"
            for q, kind in zip(self.quoted, kinds.values(), strict=True)
        ]
        self.values = ", ".join(self.value_list)

    def decode(self, record: Any) -> dict[str, Any]:
        row = dict(zip(self.names, record, strict=True))
        for i in self._json:
            name = self.names[i]
            row[name] = _decode_json(row[name])
        return row

    def source(self, first: int) -> str:
        """The rows of `params`' parameters, from `$first`, as `w(columns)`."""
        records = f"json_to_recordset(${first}::json) AS "
        if not self._bytes:
            return records + f"w({self._definitions})"
        arrays = ", ".join(f"unnest(${first + 1 + i}::bytea[])" for i in range(len(self._bytes)))
        columns = ", ".join(_QUOTE(name) for name in (*self._fields, *self._bytes))
        return f"ROWS FROM ({records}({self._definitions}), {arrays}) AS w({columns})"

    def params(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        fields = self._fields
        records = [{name: row[name] for name in fields} for row in rows]
        params: list[Any] = [_encode_json(records)]
        params.extend([row[name] for row in rows] for name in self._bytes)
        return params

    def assignments(self) -> str:
        """`column = value` for every column but the first, which names the row to update."""
        return ", ".join(
            f"{q} = {value}" for q, value in zip(self.quoted[1:], self.value_list[1:], strict=True)
        )

    def insert(self, first: int, tail: str = "") -> str:
        return (
            f"INSERT INTO {self.table} ({self.select}) "  # noqa: S608
            f"SELECT {self.values} FROM {self.source(first)}{tail}"
        )


# What the fold reads of a task (as the SQLite session): not its request, which ingest
# never changes or sends.
_TASK_READ = ("ref", "provider", "owner", "model", "created_at")
_DELIVERY_ALL = _Columns(DELIVERY, [c.name for c in DELIVERY.c])
_DELIVERY_NEW = _Columns(DELIVERY, [c.name for c in DELIVERY.c if c.name != "id"])
_OBSERVATION_ALL = _Columns(OBSERVATION, [c.name for c in OBSERVATION.c])
_OBSERVATION_NEW = _Columns(OBSERVATION, [c.name for c in OBSERVATION.c if c.name != "id"])
_TRANSITIONS = _Columns(
    TRANSITION, ("seq", "task_ref", "from_state", "to_state", "source", "source_id", "at")
)
_MESSAGES = _Columns(MESSAGE, [c.name for c in MESSAGE.c if c.name != "id"])
_ARTIFACTS = _Columns(
    ARTIFACT,
    (
        "task_ref",
        "provider",
        "name",
        "source",
        "state",
        "expires_at",
        "next_attempt_at",
        "attempts",
        "created_at",
    ),
)
_DUPLICATES = (
    "UPDATE delivery AS d SET duplicate_count = d.duplicate_count + w.n, last_seen_at = ${now} "
    "FROM json_to_recordset(${rows}::json) AS w(p text, t text, k text, n int) "
    "WHERE d.provider = w.p AND d.provider_task_id = w.t AND d.delivery_key = w.k"
)
# Its text arrays travel as JSON, as the rows written do (`_Columns`), in their order.
_TEXTS = (
    "ARRAY(SELECT v FROM json_array_elements_text(${}::json) WITH ORDINALITY AS e(v, i) ORDER BY i)"
)
_LOAD = (
    "SELECT tasks, seen FROM taskledger_ingest_load($1::int, $2::int[], "  # noqa: S608
    f"{', '.join(_TEXTS.format(n) for n in range(3, 9))})"
)
# The task columns that hold times: JSON carries them as ISO 8601 text.
_TASK_TIMES = frozenset(c.name for c in TASK.c if isinstance(c.type, UTCDateTime))
# The change feed's lock, shared (`schemas.store.locks.order_transitions`), then (only once
# it is held, hence the EXISTS) the transitions' `seq`; the new rows' ids come from their
# sequences at the same time.
_FEED = (
    "WITH feed AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($1::bigint)), "
    # The sequences looked up once, not once for every row (50-80 µs a batch of 16).
    "s AS MATERIALIZED (SELECT pg_get_serial_sequence('transition', 'seq')::regclass AS t, "
    "pg_get_serial_sequence('delivery', 'id')::regclass AS d, "
    "pg_get_serial_sequence('observation', 'id')::regclass AS o) SELECT "
    "ARRAY(SELECT nextval(s.t) FROM s, generate_series(1, $2::int) "
    "WHERE EXISTS (SELECT FROM feed)), "
    "ARRAY(SELECT nextval(s.d) FROM s, generate_series(1, $3::int)), "
    "ARRAY(SELECT nextval(s.o) FROM s, generate_series(1, $4::int))"
)
# What the fold needs to know of a delivery stored before: whose it is, what it said.
_DELIVERY_SEEN = _Columns(
    DELIVERY, ("provider", "provider_task_id", "delivery_key", "task_ref", "state")
)
_STORED_DELIVERIES = (
    "SELECT d.provider, d.provider_task_id, d.delivery_key, d.task_ref, d.state "
    "FROM unnest($1::text[], $2::text[], $3::text[]) AS w(p, t, k) JOIN delivery AS d "
    "ON d.provider = w.p AND d.provider_task_id = w.t AND d.delivery_key = w.k"
)


@functools.cache
def _task_reader(task_fields: tuple[str, ...]) -> _Columns:
    return _Columns(TASK, [*_TASK_READ, *task_fields])


@functools.cache
def _tasks_query(task_fields: tuple[str, ...]) -> str:
    """Tasks by ref, or by (provider, provider task id), unlocked: one index probe each,
    through the primary key once the pairs are turned into refs."""
    return (
        f"SELECT {_task_reader(task_fields).select} FROM task WHERE ref = ANY($1::text[] || "  # noqa: S608
        "ARRAY(SELECT t.ref FROM unnest($2::text[], $3::text[]) AS w(p, i) JOIN task AS t "
        "ON t.provider = w.p AND t.provider_task_id = w.i)) ORDER BY ref"
    )


@functools.cache
def _task_columns(task_fields: tuple[str, ...]) -> _Columns:
    return _Columns(TASK, ["ref", *task_fields])


@functools.cache
def _task_update(task_fields: tuple[str, ...], first: int) -> str:
    """Every field the fold may change, for each changed task, its parameters from `first`.

    The tasks are found by primary key first (`ref = ANY(...)`), then joined to their new
    values. Joined alone, the planner takes `json_to_recordset` for 100 rows (its fixed
    guess) and, on a ledger of a few thousand tasks, reads the whole task table for a
    batch of 16: 0.4-0.9 ms of a 1.7 ms statement, measured by `EXPLAIN ANALYZE`.
    """
    columns = _task_columns(task_fields)
    assigns = columns.assignments()
    refs = f"ARRAY(SELECT r.ref FROM json_to_recordset(${first}::json) AS r(ref text))"  # noqa: S608
    return (
        f"UPDATE task AS t SET {assigns} FROM {columns.source(first)} "  # noqa: S608
        f"WHERE t.ref = w.ref AND t.ref = ANY({refs})"
    )


@functools.cache
def _delivery_update(changed: tuple[str, ...]) -> tuple[str, _Columns]:
    """An UPDATE of stored deliveries folded in again (rare: one statement per shape)."""
    columns = _Columns(DELIVERY, ["id", *changed])
    assigns = columns.assignments()
    statement = f"UPDATE delivery AS d SET {assigns} FROM {columns.source(1)} WHERE d.id = w.id"  # noqa: S608
    return statement, columns


class _Statement:
    """A data-modifying statement being assembled: its CTEs and their parameters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    @property
    def next(self) -> int:
        return len(self.params) + 1

    def add(self, sql: str, params: Sequence[Any]) -> None:
        self.parts.append(sql)
        self.params.extend(params)

    def rows(self, columns: _Columns, rows: Sequence[dict[str, Any]], tail: str = "") -> None:
        if rows:
            self.add(columns.insert(self.next, tail), columns.params(rows))

    def text(self) -> str:
        ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(self.parts))
        return f"WITH {ctes} SELECT 1"


class PgSession:
    """An ingest's reads and writes on one asyncpg connection, inside its transaction.

    The batch's locks, its tasks and its stored deliveries come in one call of
    `taskledger_ingest_load` (migration 0008): given the batch's delivery `keys` up front,
    the first locking `tasks` call reads them too, and `deliveries` answers from that.
    """

    def __init__(
        self, conn: Any, task_fields: tuple[str, ...], keys: set[DeliveryId] | None = None
    ) -> None:
        self._conn = conn
        self._task_fields = task_fields
        self._reader = _task_reader(task_fields)
        self._keys = keys or set()
        self._lock_keys: list[int] = []
        self._seen: dict[DeliveryId, dict[str, Any]] | None = None

    async def lock_ids(self, task_ids: set[str]) -> None:
        """`schemas.store.locks.lock_task_ids`: taken by the next locking `tasks` call,
        before any row lock."""
        self._lock_keys = id_keys(task_ids)

    async def tasks(
        self, refs: set[str], pairs: set[tuple[str, str]], *, lock: bool = True
    ) -> list[dict[str, Any]]:
        """The batch's tasks, locked in ref order (unless `lock` is false)."""
        providers = [provider for provider, _ in pairs]
        ids = [task_id for _, task_id in pairs]
        if lock:
            return await self._load(sorted(refs), providers, ids)
        if not refs and not pairs:
            return []
        query = _tasks_query(self._task_fields)
        records = await self._conn.fetch(query, sorted(refs), providers, ids)
        return [self._reader.decode(record) for record in records]

    async def _load(
        self, refs: list[str], providers: list[str], ids: list[str]
    ) -> list[dict[str, Any]]:
        keys = sorted(self._keys)
        texts = [refs, providers, ids, *([key[i] for key in keys] for i in range(3))]
        tasks, seen = await self._conn.fetchrow(
            _LOAD,
            TASK_ID_LOCK_NAMESPACE,
            self._lock_keys,
            *map(_encode_json, texts),
        )
        self._lock_keys = []
        self._seen = {
            (provider, task_id, key): {
                "provider": provider,
                "provider_task_id": task_id,
                "delivery_key": key,
                "task_ref": ref,
                "state": state,
            }
            for provider, task_id, key, ref, state in _decode_json(seen) or []
        }
        decode = _task_from_json(self._reader.names)
        return [decode(row) for row in _decode_json(tasks) or []]

    async def deliveries(self, keys: set[DeliveryId]) -> dict[DeliveryId, dict[str, Any]]:
        if self._seen is not None and keys == self._keys:
            return self._seen
        if not keys:
            return {}
        arrays = [list(column) for column in zip(*keys, strict=True)]
        rows = map(_DELIVERY_SEEN.decode, await self._conn.fetch(_STORED_DELIVERIES, *arrays))
        return {_delivery_id(row): row for row in rows}

    async def held(self, refs: set[str]) -> dict[str, list[dict[str, Any]]]:
        """The deliveries held for these tasks until their provider id is settled."""
        records = await self._conn.fetch(
            f"SELECT {_DELIVERY_ALL.select} FROM delivery WHERE task_ref = ANY($1::text[]) "  # noqa: S608
            f"AND {UNFOLDED_WHERE} AND outcome = 'held' ORDER BY id",
            sorted(refs),
        )
        found: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            row = _DELIVERY_ALL.decode(record)
            found.setdefault(row["task_ref"], []).append(row)
        return found

    async def unmatched(
        self, pairs: set[tuple[str, str]]
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Deliveries kept for these (provider, id) pairs before any task had the id."""
        ordered = sorted(pairs)
        records = await self._conn.fetch(
            f"SELECT {', '.join('d.' + q for q in _DELIVERY_ALL.quoted)} "  # noqa: S608
            "FROM unnest($1::text[], $2::text[]) AS w(p, t) JOIN delivery AS d "
            "ON d.provider = w.p AND d.provider_task_id = w.t WHERE d.task_ref IS NULL "
            "ORDER BY d.id",
            [provider for provider, _ in ordered],
            [task_id for _, task_id in ordered],
        )
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in records:
            row = _DELIVERY_ALL.decode(record)
            found.setdefault((row["provider"], row["provider_task_id"]), []).append(row)
        return {pair: found[pair] for pair in ordered if pair in found}

    async def flush(self, writes: Writes, tasks: list[TaskWork], now: datetime) -> None:
        """Every write of the batch: stored deliveries folded in again first (they may be
        counted as duplicates below), then one statement for all the rest."""
        for change_shape, changes in _by_shape(writes.delivery_updates).items():
            update, columns = _delivery_update(change_shape)
            await self._conn.execute(update, *columns.params(changes))
        # Keys in key order: batches meeting over a new key wait on it in one order.
        deliveries = sorted(writes.deliveries, key=_delivery_id)
        duplicates = _count_new_duplicates(deliveries, writes.duplicates, now)
        with_ids = bool(writes.transitions)
        if with_ids:
            await self._number(writes, deliveries)
        statement = _Statement()
        statement.rows(_DELIVERY_ALL if with_ids else _DELIVERY_NEW, deliveries)
        statement.rows(_OBSERVATION_ALL if with_ids else _OBSERVATION_NEW, writes.observations)
        if duplicates:
            self._count_duplicates(statement, duplicates, now)
        if tasks:
            columns = _task_columns(self._task_fields)
            sql = _task_update(self._task_fields, statement.next)
            statement.add(sql, columns.params([work.row for work in tasks]))
        statement.rows(_TRANSITIONS, [_transition_row(t) for t in writes.transitions])
        statement.rows(_MESSAGES, message_rows(writes.messages))
        statement.rows(_ARTIFACTS, writes.artifacts, " ON CONFLICT (task_ref, name) DO NOTHING")
        if statement.parts:
            await self._conn.execute(statement.text(), *statement.params)

    async def _number(self, writes: Writes, deliveries: list[dict[str, Any]]) -> None:
        """Take the change feed's lock and give the new rows their ids and `seq`s: each
        transition names its source row, and each event its transition's `seq`."""
        seqs, delivery_ids, observation_ids = await self._conn.fetchrow(
            _FEED, FEED_LOCK_KEY, len(writes.transitions), len(deliveries), len(writes.observations)
        )
        for row, row_id in zip(deliveries, delivery_ids, strict=True):
            row["id"] = row_id
        for row, row_id in zip(writes.observations, observation_ids, strict=True):
            row["id"] = row_id
        for transition, seq in zip(writes.transitions, seqs, strict=True):
            transition.seq = seq

    @staticmethod
    def _count_duplicates(
        statement: _Statement, duplicates: dict[DeliveryId, int], now: datetime
    ) -> None:
        first = statement.next
        rows = [
            {"p": p, "t": t, "k": k, "n": duplicates[p, t, k]} for p, t, k in sorted(duplicates)
        ]
        sql = _DUPLICATES.format(now=first, rows=first + 1)
        statement.add(sql, [now, _encode_json(rows)])


def _by_shape(updates: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in updates:
        shape = tuple(sorted(name for name in change if name != "id"))
        by_shape.setdefault(shape, []).append(change)
    return by_shape


def _count_new_duplicates(
    deliveries: list[dict[str, Any]], duplicates: dict[DeliveryId, int], now: datetime
) -> dict[DeliveryId, int]:
    """Resends of a delivery this batch stores are counted in its new row (one statement
    cannot update a row it inserts); the others are left to count in the stored rows."""
    left = dict(duplicates)
    for row in deliveries:
        count = left.pop(_delivery_id(row), 0)
        if count:
            row["duplicate_count"] += count
            row["last_seen_at"] = now
    return left


@functools.lru_cache(maxsize=4096)
def _decode_when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


@functools.cache
def _task_from_json(names: tuple[str, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """How a task row as `taskledger_ingest_load` returns it is read, as the fold reads tasks."""
    plain = tuple(name for name in names if name not in _TASK_TIMES)
    times = tuple(name for name in names if name in _TASK_TIMES)

    def decode(row: dict[str, Any]) -> dict[str, Any]:
        task = {name: row[name] for name in plain}
        for name in times:
            task[name] = _decode_when(row[name])
        return task

    return decode


def _delivery_id(row: dict[str, Any]) -> DeliveryId:
    return row["provider"], row["provider_task_id"], row["delivery_key"]


def _transition_row(t: Any) -> dict[str, Any]:
    return {
        "seq": t.seq,
        "task_ref": t.task_ref,
        "from_state": t.from_state,
        "to_state": t.to_state,
        "source": t.source,
        "source_id": str(t.source_row["id"]) if t.source_row else None,
        "at": t.at,
    }
