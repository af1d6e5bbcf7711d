"""Liveness, readiness (database reachable, migrated and taking writes) and Prometheus metrics.

Readiness never waits for the write lock: it reads the schema's revision in a read-only
transaction, and learns whether the database takes writes from the writer's latest batch.
"""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.callbacks import Inbox
from receiver.errors import Overloaded
from receiver.metrics import ReceiverMetrics
from schemas.errors import StorageUnavailable
from schemas.migrate import head_revision
from schemas.store import LedgerStore


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    store: LedgerStore = request.app.state.store
    try:
        revision = await store.ping()
    except (StorageUnavailable, OSError) as exc:
        raise Overloaded("the database is unreachable") from exc
    except Exception as exc:
        raise Overloaded(f"readiness check failed: {type(exc).__name__}") from exc
    if revision != _head():
        raise Overloaded("the database schema is not at the current migration")
    inbox: Inbox | None = getattr(request.app.state, "inbox", None)
    refusal = inbox.writer.refusal if inbox is not None else None
    if refusal is not None:
        raise Overloaded(f"the database refuses writes: {refusal}")
    return JSONResponse({"status": "ready"})


@functools.cache
def _head() -> str | None:
    """The newest migration (read from the scripts once, not on every probe)."""
    return head_revision()


async def metrics(request: Request) -> Response:
    registry: ReceiverMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)
