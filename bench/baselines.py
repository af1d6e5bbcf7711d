"""Baseline ASGI apps for the ingest benchmark, served by uvicorn like the receiver.

`noop_app`: Starlette reads the body and answers 200 (the HTTP floor).
`naive_app`: the obvious durable handler, an SQLModel session per request that inserts the
delivery and commits (SQLite in WAL with synchronous=FULL, or PostgreSQL), then answers 200.
`floor_app`: the least a durable handler can do here: each body is queued to one writer
thread that inserts whatever has queued (a body and its hash, nothing else: no
authentication, parsing, ledger or index beyond the key) and commits it in one SQLite
transaction (WAL, synchronous=FULL); each request answers once its body is committed. It
shows how near the no-op any handler that stores a delivery durably can come on this machine.
Given a PostgreSQL URL, the floor is the same on PostgreSQL: an asyncpg pool, and as many
batches in flight as taskledger's receiver commits at once, each one
`INSERT ... SELECT unnest($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING` (its own
transaction) into a table whose one index is the key's.
All take any POST path; `GET /healthz` says they are up.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from schemas.store import POSTGRES_INGEST_WRITERS

NAIVE_DATABASE_URL = "BENCH_NAIVE_DATABASE_URL"
FLOOR_DATABASE_URL = "BENCH_FLOOR_DATABASE_URL"
FLOOR_TABLE = "floor_delivery"
# How many batches the PostgreSQL floor has in flight (default: as many as taskledger's).
FLOOR_IN_FLIGHT = "BENCH_FLOOR_IN_FLIGHT"


class NaiveDelivery(SQLModel, table=True):
    """What the naive handler stores: the delivery, keyed by its body's hash."""

    __tablename__ = "naive_delivery"

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=64)
    delivery_key: str = Field(max_length=200, unique=True)
    provider_task_id: str | None = Field(default=None, max_length=200)
    body: bytes = Field(sa_column=sa.Column(sa.LargeBinary(), nullable=False))
    received_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True)))


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def noop(request: Request) -> Response:
    await request.body()
    return PlainTextResponse("ok")


def noop_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/{path:path}", noop, methods=["POST"]),
        ]
    )


def naive_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _durable(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


def naive_app() -> Starlette:
    engine = naive_engine(os.environ[NAIVE_DATABASE_URL])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(NaiveDelivery.metadata.create_all, tables=[_table()])
        try:
            yield
        finally:
            await engine.dispose()

    async def store(request: Request) -> Response:
        body = await request.body()
        payload = orjson.loads(body)
        row = NaiveDelivery(
            provider=request.path_params["path"].split("/")[1],
            delivery_key=hashlib.sha256(body).hexdigest(),
            provider_task_id=_task_id(payload),
            body=body,
            received_at=datetime.now(UTC),
        )
        async with AsyncSession(engine) as session:
            session.add(row)
            await session.commit()
        return JSONResponse({"outcome": "stored"})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/{path:path}", store, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _table() -> sa.Table:
    return SQLModel.metadata.tables[NaiveDelivery.__tablename__]


def _task_id(payload: Any) -> str | None:
    data = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(data, dict):
        value = data.get("task_id") or data.get("id")
        return str(value) if value else None
    return None


# A queued body: its key, the body, and the future its request awaits (None stops the writer).
_Queued = tuple[str, bytes, "asyncio.Future[None]"]


def floor_app() -> Starlette:
    url = sa.engine.make_url(os.environ[FLOOR_DATABASE_URL])
    if url.get_backend_name() == "postgresql":
        return pg_floor_app(url.set(drivername="postgresql").render_as_string(False))
    path = url.database
    if not path:
        raise ValueError(f"{FLOOR_DATABASE_URL} must name an SQLite file")
    bodies: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()

    def write(loop: asyncio.AbstractEventLoop) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS floor_delivery "
            "(id INTEGER PRIMARY KEY, delivery_key TEXT UNIQUE NOT NULL, body BLOB NOT NULL)"
        )
        while (first := bodies.get()) is not None:
            batch = [first]
            while not bodies.empty() and (item := bodies.get_nowait()) is not None:
                batch.append(item)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR IGNORE INTO floor_delivery (delivery_key, body) VALUES (?, ?)",
                [(key, body) for key, body, _ in batch],
            )
            conn.execute("COMMIT")
            loop.call_soon_threadsafe(_resolve, [future for _, _, future in batch])
        conn.close()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer = threading.Thread(target=write, args=(asyncio.get_running_loop(),), daemon=True)
        writer.start()
        try:
            yield
        finally:
            bodies.put(None)
            await asyncio.to_thread(writer.join)

    return _group_commit_app(bodies.put, lifespan)


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


# The PostgreSQL floor's statement: a batch of bodies, one round trip, one commit.
PG_FLOOR_INSERT = (
    f"INSERT INTO {FLOOR_TABLE} (delivery_key, body) "
    "SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING"
)


def pg_floor_app(dsn: str) -> Starlette:
    """The durable floor on PostgreSQL (see the module's docstring)."""
    bodies: asyncio.Queue[_Queued] = asyncio.Queue()
    writers: list[asyncio.Task[None]] = []

    async def write(pool: asyncpg.Pool) -> None:
        while True:
            batch = [await bodies.get()]
            while not bodies.empty():
                batch.append(bodies.get_nowait())
            try:
                await pool.execute(
                    PG_FLOOR_INSERT, [key for key, _, _ in batch], [body for _, body, _ in batch]
                )
            except Exception as exc:  # each waiting request gets the error
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            _resolve([future for _, _, future in batch])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        in_flight = int(os.environ.get(FLOOR_IN_FLIGHT, str(POSTGRES_INGEST_WRITERS)))
        async with asyncpg.create_pool(dsn, min_size=in_flight, max_size=in_flight) as pool:
            await pool.execute(
                f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} "
                "(delivery_key text PRIMARY KEY, body bytea NOT NULL)"
            )
            writers.extend(asyncio.create_task(write(pool)) for _ in range(in_flight))
            try:
                yield
            finally:
                for writer in writers:
                    writer.cancel()
                await asyncio.gather(*writers, return_exceptions=True)

    return _group_commit_app(bodies.put_nowait, lifespan)


def _group_commit_app(queue: Callable[[_Queued], None], lifespan: Any) -> Starlette:
    """A floor's routes: each body is queued with its key, answered once it is committed."""

    async def store(request: Request) -> Response:
        body = await request.body()
        future = asyncio.get_running_loop().create_future()
        queue((hashlib.sha256(body).hexdigest(), body, future))
        await future
        return PlainTextResponse("ok")

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/{path:path}", store, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
