"""Liveness, readiness (database reachable, migrated and taking writes) and Prometheus metrics.

Readiness never waits for the write lock: it reads the schema's revision in a read-only
transaction, and learns whether the database takes writes from the writer's latest batch.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver import contract
from receiver.callbacks import Inbox
from receiver.errors import Overloaded
from receiver.metrics import ReceiverMetrics
from receiver.spool import Spool
from schemas.errors import StorageUnavailable
from schemas.migrate import head_revision
from schemas.store import LedgerStore


async def healthz(_request: Request) -> Response:
    return JSONResponse(contract.Alive(status="ok"))


async def readyz(request: Request) -> Response:
    """Ready: the database takes writes; or, on PostgreSQL, it does not but the local spool
    has room (`spooling`): a load balancer routing on this keeps the receiver in rotation
    through a failover, which is what the spool is for. Not ready while callbacks go to a
    spool that failed to write them (its directory unusable): each would be answered 503."""
    inbox: Inbox | None = getattr(request.app.state, "inbox", None)
    spool = inbox.spool if inbox is not None else None
    try:
        await _database_ready(request.app.state.store, inbox)
    except Overloaded as exc:
        if spool is None or spool.size >= spool.max_bytes:
            raise
        _spool_writes(spool, exc)
        spooling = contract.Readiness(status="spooling", reason=exc.message, depth=spool.depth)
        return JSONResponse(_with_quarantine(spooling, spool))
    if spool is not None and spool.engaged:
        _spool_writes(spool, None)
    return JSONResponse(_with_quarantine(contract.Readiness(status="ready"), spool))


def _spool_writes(spool: Spool, cause: Overloaded | None) -> None:
    """Refuse readiness while the spool's latest append failed (`Spool.failure`)."""
    failure = spool.failure
    if failure is not None:
        raise Overloaded(f"the local spool cannot write: {failure}") from cause


def _with_quarantine(answer: contract.Readiness, spool: Spool | None) -> contract.Readiness:
    """How many spooled deliveries wait in quarantine for an operator, when any do: said,
    with the answer still 200 (they are kept; taking this receiver out of rotation would
    not help them)."""
    if spool is not None and spool.quarantined:
        answer["quarantined"] = spool.quarantined
    return answer


async def _database_ready(store: LedgerStore, inbox: Inbox | None) -> None:
    try:
        revision = await store.ping()
    except (StorageUnavailable, OSError) as exc:
        raise Overloaded("the database is unreachable") from exc
    except Exception as exc:
        raise Overloaded(f"readiness check failed: {type(exc).__name__}") from exc
    if revision != head_revision():
        raise Overloaded("the database schema is not at the current migration")
    refusal = inbox.writer.refusal if inbox is not None else None
    if refusal is not None:
        raise Overloaded(f"the database refuses writes: {refusal}")


async def metrics(request: Request) -> Response:
    registry: ReceiverMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)
