"""Liveness, readiness (database reachable and migrated) and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.errors import Overloaded
from receiver.metrics import ReceiverMetrics
from schemas.errors import StorageUnavailable
from schemas.migrate import is_current
from schemas.store import LedgerStore


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    store: LedgerStore = request.app.state.store
    try:
        await store.ping()
        migrated = await is_current(store.engine)
    except (StorageUnavailable, OSError) as exc:
        raise Overloaded("the database is unreachable") from exc
    except Exception as exc:
        raise Overloaded(f"readiness check failed: {type(exc).__name__}") from exc
    if not migrated:
        raise Overloaded("the database schema is not at the current migration")
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    registry: ReceiverMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)
