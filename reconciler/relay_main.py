"""`python -m reconciler.relay`: run the relay until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from reconciler.__main__ import help_parser, refuse, run_loop, serve_metrics, warn_unknown
from reconciler.relay import Relay
from reconciler.relay_metrics import RelayMetrics
from schemas import logs
from schemas.clock import utc_now
from schemas.database import create_engine, require_current
from schemas.errors import ConfigError
from schemas.settings import RelaySettings, setting_names
from schemas.store import LedgerStore

DESCRIPTION = """\
Send the outbox's events to the registered endpoints (webhooks, NATS, RabbitMQ) until
SIGTERM or SIGINT, which finishes the attempts in flight. It reads only the environment
(no .env: `taskledger run` loads it) and needs no secret. Exit codes: 0 stopped, 2 a bad
setting, 3 the database unreachable or not migrated, 4 the metrics port in use."""


async def serve(settings: RelaySettings) -> None:
    engine = create_engine(
        settings.database_url,
        synchronous=settings.sqlite_synchronous,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
    )
    store = LedgerStore(engine, utc_now)
    try:
        await require_current(store.ping, settings.database_url)
        metrics = RelayMetrics()
        serve_metrics(metrics.serve, "NOTIFY_METRICS_PORT", settings.notify.metrics_port)
        relay = Relay(settings.notify, store, clock=utc_now, metrics=metrics)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, relay.stopping.set)
        await relay.run()
    finally:
        await store.close()
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    names = setting_names(RelaySettings).describe()
    help_parser("python -m reconciler.relay", DESCRIPTION, names).parse_args(
        sys.argv[1:] if argv is None else argv
    )
    try:
        settings = RelaySettings.from_environ(os.environ)
    except ConfigError as exc:
        return refuse("relay", exc)
    logs.configure(settings.log_level, settings.log_json)
    warn_unknown(os.environ)
    try:
        run_loop(serve(settings))
    except ConfigError as exc:
        return refuse("relay", exc)
    return 0
