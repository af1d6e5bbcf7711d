"""Baseline ASGI apps for the ingest benchmark, served by uvicorn like the receiver.

`noop_app`: Starlette reads the body and answers 200 (the HTTP floor).
`naive_app`: the obvious durable handler, an SQLModel session per request that inserts the
delivery and commits (SQLite in WAL with synchronous=FULL, or PostgreSQL), then answers 200.
Both take any POST path; `GET /healthz` says they are up.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

NAIVE_DATABASE_URL = "BENCH_NAIVE_DATABASE_URL"


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
