"""`python -m reconciler`: run the reconciler until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from reconciler.archiver import Archiver
from reconciler.clients import ProviderClients
from reconciler.fetch import FetchLimits, SafeFetcher
from reconciler.metrics import ReconcilerMetrics
from reconciler.process import Reconciler
from schemas import logs
from schemas.clock import utc_now
from schemas.database import create_engine, describe, require_current
from schemas.errors import ConfigError, InUse
from schemas.media.storage import ArchiveStore, open_store
from schemas.settings import PREFIX, Settings, setting_names, unknown_settings
from schemas.store import LedgerStore

log = structlog.get_logger("taskledger.reconciler")

DESCRIPTION = """\
Poll the providers for the tasks whose callbacks never came or need confirming, submit the
tasks registered with "submit": true, archive the outputs of succeeded tasks; until SIGTERM
or SIGINT. It reads only the environment (no .env: `taskledger run` loads it). Exit codes:
0 stopped, 2 a bad setting, 3 the database unreachable or not migrated, 4 the metrics port
in use."""


async def serve(settings: Settings, media: ArchiveStore | None = None) -> None:
    engine = create_engine(
        settings.database_url,
        synchronous=settings.sqlite_synchronous,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
    )
    store = LedgerStore(engine, utc_now, settings.readers)
    try:
        metrics = await _started(settings, store, media)
        async with ProviderClients.open(settings.providers.values()) as clients:
            reconciler = Reconciler(settings, store, clients, clock=utc_now, metrics=metrics)
            gc.freeze()  # start-up objects live forever: keep them out of every collection
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, reconciler.stopping.set)
            async with archiving(settings, media, store, reconciler, metrics):
                await reconciler.run()
    finally:
        await store.close()
        await engine.dispose()


async def _started(
    settings: Settings, store: LedgerStore, media: ArchiveStore | None
) -> ReconcilerMetrics:
    """The start-up checks (the database answers and is migrated, the metrics port is free)
    and the database named; on a refusal the archive is closed here."""
    try:
        await require_current(store.ping, settings.database_url)
        metrics = ReconcilerMetrics()
        serve_metrics(metrics.serve, "RECONCILER_METRICS_PORT", settings.reconciler_metrics_port)
    except ConfigError:
        if media is not None:
            await media.close()
        raise
    # Which providers are pollable: `reconciler_started`, from the loop that polls them.
    log.info("reconciler_configured", database=describe(settings.database_url))
    return metrics


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


def serve_metrics(serve: Callable[[int], None], variable: str, port: int | None) -> None:
    """Metrics on `port`, if set; a port in use is `InUse`, naming the variable."""
    if not port:
        return
    try:
        serve(port)
    except OSError as exc:
        raise InUse(f"{PREFIX}{variable}: cannot listen on port {port} ({exc.strerror})") from None


def help_parser(prog: str, description: str, names: str) -> argparse.ArgumentParser:
    """A parser that only answers `--help`: the usage and every setting the process reads."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"settings (environment variables; blank or unset: the default):\n{names}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def refuse(process: str, exc: ConfigError) -> int:
    """A process that cannot start: one line naming what is wrong, its exit code."""
    print(f"{process}: {exc}", file=sys.stderr)
    return exc.exit_code


def warn_unknown(environ: Mapping[str, str]) -> None:
    for warning in unknown_settings(environ):
        log.warning("setting_ignored", detail=warning)


def main(argv: Sequence[str] = ()) -> int:
    help_parser("python -m reconciler", DESCRIPTION, setting_names(Settings).describe()).parse_args(
        argv
    )
    try:
        settings = Settings.from_environ(os.environ)
        media = open_archive(settings)
        settings.check_secrets()
    except ConfigError as exc:
        return refuse("reconciler", exc)
    logs.configure(settings.log_level, settings.log_json)
    warn_unknown(os.environ)
    try:
        run_loop(serve(settings, media))
        code = 0
    except ConfigError as exc:
        code = refuse("reconciler", exc)
    if media is not None and media.kind == "s3":
        # obstore's runtime threads can abort a Python < 3.14 interpreter as it shuts down
        # (pyo3-async-runtimes#40): everything is closed and flushed, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


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
    raise SystemExit(main(sys.argv[1:]))
