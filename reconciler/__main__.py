"""`python -m reconciler`: run the reconciler until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Mapping
from pathlib import Path
from typing import Any

from reconciler.archiver import Archiver
from reconciler.clients import ProviderClients
from reconciler.fetch import FetchLimits, SafeFetcher
from reconciler.metrics import ReconcilerMetrics
from reconciler.process import Reconciler
from schemas import logs
from schemas.clock import utc_now
from schemas.database import create_engine
from schemas.errors import ConfigError
from schemas.media.storage import ArchiveStore, open_store
from schemas.settings import Settings
from schemas.store import LedgerStore


async def serve(settings: Settings, media: ArchiveStore | None = None) -> None:
    engine = create_engine(
        settings.database_url,
        synchronous=settings.sqlite_synchronous,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
    )
    metrics = ReconcilerMetrics()
    if settings.reconciler_metrics_port:
        metrics.serve(settings.reconciler_metrics_port)
    store = LedgerStore(engine, utc_now, settings.readers)
    try:
        async with ProviderClients.open(settings.providers.values()) as clients:
            reconciler = Reconciler(settings, store, clients, clock=utc_now, metrics=metrics)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, reconciler.stopping.set)
            async with archiving(settings, media, store, reconciler, metrics):
                await reconciler.run()
    finally:
        await store.close()
        await engine.dispose()


@contextlib.asynccontextmanager
async def archiving(
    settings: Settings,
    media: ArchiveStore | None,
    store: LedgerStore,
    reconciler: Reconciler,
    metrics: ReconcilerMetrics,
) -> AsyncIterator[None]:
    """The archiver beside the poll loop, when the archive is on: same process, same
    database pool, same stop signal and metrics port (it is mostly waiting on I/O)."""
    archive = settings.archive
    if media is None:
        yield
        return
    limits = FetchLimits(
        max_bytes=archive.max_bytes,
        connect_timeout_seconds=archive.connect_timeout_seconds,
        read_timeout_seconds=archive.read_timeout_seconds,
        max_redirects=archive.max_redirects,
    )
    async with SafeFetcher(archive.policy, limits) as fetcher:
        archiver = Archiver(
            archive,
            dict(settings.providers),
            store,
            media,
            fetcher,
            owner=reconciler.owner,
            clock=utc_now,
            metrics=metrics,
            stopping=reconciler.stopping,
        )
        task = asyncio.create_task(archiver.run(), name="archiver")
        try:
            yield
        finally:
            reconciler.stopping.set()
            await task
            await media.close()


def main() -> int:
    try:
        settings = Settings.from_environ(os.environ)
        media = open_archive(settings)
    except ConfigError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    run_loop(serve(settings, media))
    if media is not None and media.kind == "s3":
        # obstore's runtime threads can abort a Python < 3.14 interpreter as it shuts down
        # (pyo3-async-runtimes#40): everything is closed and flushed, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def open_archive(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> ArchiveStore | None:
    """The archive's store, None when archiving is off; a bad URL is a `ConfigError`."""
    archive = settings.archive
    if not archive.enabled:
        return None
    environ = os.environ if environ is None else environ
    return open_store(archive.url, environ, spool_dir=Path(archive.spool_dir))


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
