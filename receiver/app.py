"""The receiver's ASGI app: routes, lifespan (engine, store, writer), error mapping."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver import (
    admin,
    artifacts,
    auth,
    callbacks,
    dashboard,
    endpoints,
    health,
    keys,
    openapi,
    queries,
    ui,
)
from receiver.answers import answer_of, refusal
from receiver.callbacks import Inbox
from receiver.deadlines import AnswerDeadline
from receiver.errors import MethodNotAllowed, NotFound, Overloaded, ReceiverError
from receiver.metrics import ReceiverMetrics, multiprocess_dir
from receiver.schemes import callback_schemes
from receiver.spool import keeps_spool, open_spool
from receiver.writer import GroupCommitWriter
from schemas import logs
from schemas.clock import utc_now
from schemas.database import create_engine, describe, require_current
from schemas.errors import ConfigError, DatabaseNotMigrated, DatabaseUnreachable, StorageUnavailable
from schemas.settings import Settings, check_spool_dir, unknown_settings, warn_webhooks_refused
from schemas.store import LedgerStore

log = structlog.get_logger("taskledger.receiver")


# Requests answered at once; more get 503 with Retry-After. It bounds the memory bodies
# being read take (each at most `TASKLEDGER_MAX_BODY_BYTES`). Counted here, not by
# uvicorn's `--limit-concurrency`, which counts open connections, idle ones too: a few
# thousand connections that send nothing would turn every callback away.
IN_FLIGHT_MAX = 2048
_BUSY = answer_of(Overloaded("too many requests in flight"))
# Every `/v1` answer, and every refusal but the callback routes' own: never sniffed as
# another type, never kept by a cache (a task's answer holds its callback URL and token).
API_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
API_PREFIX = "/v1/"


class ReceiverApp(Starlette):
    """Starlette, except that a callback POST goes straight to its endpoint: the one
    route senders load skips the middleware stack and the router's scan of every route
    (the same endpoints are also routes below, for the rare path the shortcut passes)."""

    in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if self.in_flight >= IN_FLIGHT_MAX and scope["path"] != "/healthz":
            await _BUSY.send(send)  # (alive all the same: a liveness probe must not restart it)
            return
        self.in_flight += 1
        try:
            endpoint = callbacks.match(scope)
            if endpoint is None:
                await super().__call__(scope, receive, send)
                return
            scope["app"] = self
            await endpoint(scope, receive, send)
        finally:
            self.in_flight -= 1


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], datetime] = utc_now,
    metrics_dir: str | None = None,
) -> ReceiverApp:
    """Build the app; without `settings` it reads `TASKLEDGER_*` (uvicorn's `--factory`).
    `metrics_dir`: where every worker's metrics go, with several (`PROMETHEUS_MULTIPROC_DIR`)."""
    if settings is None:
        return _from_environ(clock)
    # Built with the app, not at start-up: a setting they lack (fal's user id) stops the
    # factory as any bad setting does, in one line, instead of failing the lifespan.
    schemes = callback_schemes(settings, clock)
    metrics = ReceiverMetrics(metrics_dir)
    # Opened once, with the app (a bad archive URL stops the factory as a bad setting does).
    media = artifacts.open_archive(settings, os.environ)
    check_spool_dir(settings)  # the receiver's alone: it keeps callbacks there in an outage

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url,
            synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        )
        store = LedgerStore(engine, clock, settings.readers)
        changes = queries.ChangeSignal()
        writer = GroupCommitWriter(
            store.ingest,
            queue_size=settings.writer_queue_size,
            batch_size=settings.writer_batch_size,
            concurrency=settings.writer_concurrency or store.ingest_writers,
            on_batch=metrics.batch_size.observe,
            on_commit=changes.notify,
            answer_within=settings.answer_deadline_seconds,
        )
        await writer.start()
        spool = open_spool(settings, metrics)
        if spool is not None:
            await spool.start(store, changes.notify)
        app.state.store = store
        app.state.changes = changes
        app.state.inbox = Inbox.build(settings, writer, metrics, clock, spool, schemes)
        gc.freeze()  # start-up objects live forever: keep them out of every collection
        archive = media.describe() if media is not None else "off"
        log.info(
            "receiver_started",
            database=describe(settings.database_url),
            providers=sorted(settings.providers),
            archive=archive,
        )
        warn_webhooks_refused(log, settings)
        try:
            yield
        finally:
            await writer.stop()
            if spool is not None:
                await spool.stop()
            if media is not None:
                await media.close()
            await store.close()
            await engine.dispose()
            metrics.close()
            log.info("receiver_stopped")

    described = openapi.document(
        {name: provider.kind for name, provider in settings.providers.items()},
        {**ui.OPENAPI_PATHS, **artifacts.OPENAPI_PATHS, **dashboard.OPENAPI_PATHS},
    )
    app = ReceiverApp(
        routes=wrapped_routes(routes(), described),
        lifespan=lifespan,
        # Admin writes answer within the same deadline as callbacks, counted from arrival.
        middleware=[Middleware(AnswerDeadline, seconds=settings.answer_deadline_seconds)],
        # Refusals and storage failures are answered by ExceptionMiddleware; anything else
        # (a bug) by ServerErrorMiddleware, which also lets the server log it.
        exception_handlers={
            HTTPException: _unrouted,
            ReceiverError: _refused,
            StorageUnavailable: _refused,
            Exception: _refused,
        },
    )
    # Never a redirect: a sender that follows a 307 from `/webhooks/openai/` may not resend.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.media = media
    app.state.openapi = described
    app.state.metrics = metrics
    app.state.keys = auth.KeyCache()
    return app


def _from_environ(clock: Callable[[], datetime]) -> ReceiverApp:
    """uvicorn's `--factory`: the settings of `TASKLEDGER_*`, checked, and the database
    probed; a refusal is one line naming the setting and an exit code, not a traceback."""
    try:
        settings = Settings.from_environ(os.environ)
        settings.check_secrets()
        logs.configure(settings.log_level, settings.log_json)
        for warning in unknown_settings(os.environ):
            log.warning("setting_ignored", detail=warning)
        _check_database(settings)
        return create_app(settings, clock=clock, metrics_dir=multiprocess_dir(os.environ))
    except ConfigError as exc:
        print(f"web: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None


def _check_database(settings: Settings) -> None:
    """The database answers and is migrated. uvicorn calls the factory inside its running
    loop, so the check runs on a thread, in a loop of its own, before anything is served."""

    async def check() -> None:
        engine = create_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
        store = LedgerStore(engine, utc_now)
        try:
            await require_current(store.ping, settings.database_url)
        except DatabaseNotMigrated:
            raise
        except DatabaseUnreachable as exc:
            # A receiver started during a failover (a deploy, a restart) serves anyway when
            # it can spool: refusing to start would turn away the callbacks the spool is for.
            if not keeps_spool(settings):
                raise
            log.warning("database_unreachable_at_start", detail=str(exc), action="spooling")
        finally:
            await store.close()
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, check()).result()


def routes() -> list[Route]:
    return [
        Route("/callbacks/{provider}/{token}", callbacks.CALLBACK, methods=["POST"]),
        Route("/webhooks/{source}", callbacks.WEBHOOK, methods=["POST"]),
        Route("/v1/tasks", admin.create_task, methods=["POST"]),
        Route("/v1/tasks", queries.list_tasks, methods=["GET"]),
        Route("/v1/changes", queries.changes, methods=["GET"]),
        Route("/v1/audit", queries.audit, methods=["GET"]),
        Route("/v1/export", queries.export, methods=["GET"]),
        Route("/v1/deliveries", queries.list_deliveries, methods=["GET"]),
        Route("/v1/deliveries/{id}", queries.show_delivery, methods=["GET"]),
        Route("/v1/tasks/{ref}", admin.show_task, methods=["GET"]),
        Route("/v1/tasks/{ref}", admin.attach_task_id, methods=["PATCH"]),
        Route("/v1/tasks/{ref}/artifacts", artifacts.list_artifacts, methods=["GET"]),
        Route(
            "/v1/tasks/{ref}/artifacts/{name}", artifacts.serve_artifact, methods=["GET", "HEAD"]
        ),
        Route("/v1/endpoints", endpoints.create_endpoint, methods=["POST"]),
        Route("/v1/endpoints", endpoints.list_endpoints, methods=["GET"]),
        Route("/v1/endpoints/{id}", endpoints.show_endpoint, methods=["GET"]),
        Route("/v1/endpoints/{id}", endpoints.update_endpoint, methods=["PATCH"]),
        Route("/v1/endpoints/{id}", endpoints.delete_endpoint, methods=["DELETE"]),
        Route("/v1/endpoints/{id}/rotate", endpoints.rotate_secret, methods=["POST"]),
        Route("/v1/endpoints/{id}/recover", endpoints.recover_endpoint, methods=["POST"]),
        Route("/v1/messages/{msg_id}/retry", endpoints.retry_message, methods=["POST"]),
        Route("/v1/keys", keys.create_key, methods=["POST"]),
        Route("/v1/keys", keys.list_keys, methods=["GET"]),
        Route("/v1/keys/{id}", keys.revoke_key, methods=["DELETE"]),
        Route("/v1/dashboard/outcomes", dashboard.outcomes, methods=["GET"]),
        Route("/v1/dashboard/providers", dashboard.provider_health, methods=["GET"]),
        Route("/v1/tasks/{ref}/deliveries/{id}", dashboard.delivery_payload, methods=["GET"]),
        Route("/v1/tasks/{ref}/polls/{id}", dashboard.poll_payload, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi, methods=["GET"]),
        *ui.routes(),
    ]


def wrapped_routes(found: list[Route], described: Mapping[str, Any]) -> list[Route]:
    """`found`, each route whose operations' query is checked (`openapi.query_names`, from
    the description served: the docs and the check never disagree) behind a `QueryCheck`,
    and each `/v1` route's answers given `API_HEADERS` (`ApiHeaders`). The callback routes
    are left as they are."""
    names = openapi.query_names(described)
    return [_wrapped_route(route, names) for route in found]


def _wrapped_route(route: Route, names: Mapping[tuple[str, str], tuple[str, ...]]) -> Route:
    taken = {m: names[m, route.path] for m in route.methods or () if (m, route.path) in names}
    if "GET" in taken:
        taken.setdefault("HEAD", taken["GET"])  # Starlette answers HEAD with the GET route
    middleware = [Middleware(ApiHeaders)] if route.path.startswith(API_PREFIX) else []
    if taken:
        middleware.append(Middleware(QueryCheck, taken=taken))
    if not middleware:
        return route
    return Route(
        route.path, route.endpoint, methods=route.methods, name=route.name, middleware=middleware
    )


class ApiHeaders:
    """Adds to a `/v1` route's answer each of `API_HEADERS` it does not set itself (an
    archived file keeps its own caching). A refusal raised before the endpoint answers is
    `_refused`'s, which adds them too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                given = {name.lower() for name, _ in headers}
                headers += [header for header in _API_RAW_HEADERS if header[0] not in given]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


_API_RAW_HEADERS = [(name.lower().encode(), value.encode()) for name, value in API_HEADERS.items()]


class QueryCheck:
    """Refuses (422) a query parameter the route's operation does not declare, or one given
    twice, before the endpoint runs (`queries.check_query`)."""

    def __init__(self, app: ASGIApp, taken: Mapping[str, tuple[str, ...]]) -> None:
        self.app = app
        self.taken = taken

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: bytes = scope.get("query_string", b"")
        if raw and (taken := self.taken.get(scope["method"])) is not None:
            queries.check_query(raw, taken)
        await self.app(scope, receive, send)


async def _refused(request: Request, exc: Exception) -> Response:
    """Every error of the other routes: the same answers as the callback endpoints give."""
    answer = answer_of(refusal(exc, "other"))
    headers = {**answer.headers, **API_HEADERS}
    return Response(answer.body, answer.status, headers, "application/json")


async def _unrouted(request: Request, exc: Exception) -> Response:
    """The router's own refusals, in the shape of every other error: no route has the path
    (404), or its routes take other methods (405, with `Allow` naming them)."""
    if not isinstance(exc, HTTPException):  # registered for this class only
        return await _refused(request, exc)
    headers = {**(exc.headers or {}), **API_HEADERS}
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        error: ReceiverError = MethodNotAllowed(f"this path takes {', '.join(allowed)} only")
    elif exc.status_code == 404:
        error = NotFound("no route has this path: see /openapi.json")
    else:  # Starlette raises no other here; should it, its status and words are kept
        error = ReceiverError(exc.detail)
        error.status_code, error.reason = exc.status_code, "http_error"
    answer = answer_of(error)
    return Response(answer.body, answer.status, headers, "application/json")


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route of the request's path (one route a method, so the
    router's 405 names only the first route's)."""
    methods = {
        method
        for route in request.app.routes
        if isinstance(route, Route)
        and route.methods
        and route.matches(request.scope)[0] != Match.NONE
        for method in route.methods
    }
    return sorted(methods)
