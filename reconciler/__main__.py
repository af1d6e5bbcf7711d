"""`python -m reconciler`: run the reconciler until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from reconciler.clients import ProviderClients
from reconciler.metrics import ReconcilerMetrics
from reconciler.process import Reconciler
from schemas import logs
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.errors import ConfigError
from schemas.settings import Settings
from schemas.store import LedgerStore


async def serve(settings: Settings) -> None:
    engine = create_engine(
        settings.database_url,
        synchronous=settings.sqlite_synchronous,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
    )
    metrics = ReconcilerMetrics()
    if settings.reconciler_metrics_port:
        metrics.serve(settings.reconciler_metrics_port)
    try:
        async with ProviderClients.open(settings.providers.values()) as clients:
            reconciler = Reconciler(
                settings,
                LedgerStore(engine, utc_now, settings.readers),
                clients,
                clock=utc_now,
                metrics=metrics,
            )
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, reconciler.stopping.set)
            await reconciler.run()
    finally:
        await engine.dispose()


def main() -> int:
    try:
        settings = Settings.from_environ(os.environ)
    except ConfigError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    run_loop(serve(settings))
    return 0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where it is installed (it is with uvicorn's standard extras; not on Windows),
    the loop the receiver runs on too; asyncio's own elsewhere."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    raise SystemExit(main())
