"""The receiver's ASGI app: routes, lifespan (engine, store, writer), error mapping."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver import admin, health, openapi, queries, ui
from receiver.callbacks import Inbox, receive_callback, receive_webhook
from receiver.errors import Overloaded, ReceiverError
from receiver.metrics import ReceiverMetrics
from receiver.writer import GroupCommitWriter
from schemas import logs
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.errors import StorageUnavailable
from schemas.settings import Settings
from schemas.store import LedgerStore

log = structlog.get_logger("taskledger.receiver")


def create_app(
    settings: Settings | None = None, *, clock: Callable[[], datetime] = utc_now
) -> Starlette:
    """Build the app; without `settings` it reads `TASKLEDGER_*` (uvicorn's `--factory`)."""
    if settings is None:
        settings = Settings.from_environ(os.environ)
        logs.configure(settings.log_level, settings.log_json)
    metrics = ReceiverMetrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url,
            synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        )
        store = LedgerStore(engine, clock)
        changes = queries.ChangeSignal()
        writer = GroupCommitWriter(
            store.ingest,
            queue_size=settings.writer_queue_size,
            batch_size=settings.writer_batch_size,
            on_batch=metrics.batch_size.observe,
            on_commit=changes.notify,
        )
        await writer.start()
        app.state.store = store
        app.state.changes = changes
        app.state.inbox = Inbox.build(settings, writer, metrics, clock)
        gc.freeze()  # start-up objects live forever: keep them out of every collection
        log.info("receiver_started", providers=sorted(settings.providers))
        try:
            yield
        finally:
            await writer.stop()
            await store.close()
            await engine.dispose()
            log.info("receiver_stopped")

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={
            ReceiverError: _refused,
            StorageUnavailable: _unavailable,
            Exception: _unexpected,
        },
    )
    # Never a redirect: a sender that follows a 307 from `/webhooks/openai/` may not resend.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.openapi = openapi.document(ui.OPENAPI_PATHS)
    app.state.metrics = metrics
    return app


def routes() -> list[Route]:
    return [
        Route("/callbacks/{provider}/{token}", receive_callback, methods=["POST"]),
        Route("/webhooks/{source}", receive_webhook, methods=["POST"]),
        Route("/v1/tasks", admin.create_task, methods=["POST"]),
        Route("/v1/tasks", queries.list_tasks, methods=["GET"]),
        Route("/v1/changes", queries.changes, methods=["GET"]),
        Route("/v1/audit", queries.audit, methods=["GET"]),
        Route("/v1/export", queries.export, methods=["GET"]),
        Route("/v1/tasks/{ref}", admin.show_task, methods=["GET"]),
        Route("/v1/tasks/{ref}", admin.attach_task_id, methods=["PATCH"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi, methods=["GET"]),
        *ui.routes(),
    ]


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReceiverError)
    _count_rejection(request, exc.reason)
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(exc.retry_after_seconds)
    return JSONResponse(
        {"error": exc.reason, "message": exc.message}, exc.status_code, headers=headers
    )


async def _unavailable(request: Request, exc: Exception) -> Response:
    return await _refused(request, Overloaded(f"storage unavailable: {exc}"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A bug must not read as "disable this endpoint": the sender retries a 503."""
    log.error(
        "request_crashed", path_kind=_route_kind(request), error=type(exc).__name__, exc_info=exc
    )
    return await _refused(request, Overloaded("unexpected error"))


def _count_rejection(request: Request, reason: str) -> None:
    kind = _route_kind(request)
    if kind not in ("callback", "webhook"):
        return
    name = request.path_params.get("provider") or request.path_params.get("source", "")
    settings: Settings = request.app.state.settings
    label = name if name in settings.providers else "unknown"
    request.app.state.metrics.rejections.labels(label, reason).inc()
    log.info("delivery_refused", provider=label, reason=reason)


def _route_kind(request: Request) -> str:
    path = request.url.path
    if path.startswith("/callbacks/"):
        return "callback"
    if path.startswith("/webhooks/"):
        return "webhook"
    return "other"
