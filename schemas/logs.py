"""structlog set-up shared by both processes: JSON lines to stdout, readable on a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Hashable
from typing import TextIO

import orjson
import structlog

# Keys that may carry secrets or customer content; dropped from every event.
REDACTED_KEYS = frozenset(
    {"token", "secret", "signature", "authorization", "prompt", "body", "url", "callback_url"}
)
# uvicorn's server loggers (not its access log, which would print callback tokens).
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")
# Keys a `Throttle` keeps at most (keys come from a few providers and reasons, but a name
# in a URL is the sender's to choose).
THROTTLE_KEYS_MAX = 1024


def configure(level: str = "info", json: bool | None = None) -> None:
    """Route structlog and stdlib logging to stdout at `level`."""
    as_json = (not sys.stdout.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(_json_line)
        if as_json
        else structlog.dev.ConsoleRenderer()
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        drop_sensitive,
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stdout_logger,
        cache_logger_on_first_use=False,
    )
    # Lines of stdlib loggers (libraries', and uvicorn's own: "Started server process",
    # "Invalid HTTP request received") in the same shape, not as plain text among them.
    handler = _StdoutHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler], force=True)
    for name in UVICORN_LOGGERS:  # configured by uvicorn before it loads the app
        uvicorn = logging.getLogger(name)
        uvicorn.handlers.clear()
        uvicorn.propagate = True


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdlib handler writing to whatever `sys.stdout` is at the moment, as `_Stdout`."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def _json_line(event: structlog.typing.EventDict, **_options: object) -> str:
    return orjson.dumps(event, default=repr).decode()


class _Stdout:
    """Writes each line to whatever `sys.stdout` is at that moment (servers and tests swap
    it). On an event loop the lines of one loop turn go out in one flush at its end (one
    write instead of one per request); anywhere else each line is flushed at once."""

    def __init__(self) -> None:
        self._dirty: list[TextIO] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # where a flush is due

    def msg(self, message: str) -> None:
        out = sys.stdout
        out.write(message + "\n")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            out.flush()
            return
        if self._flush_on is not loop:  # none due, or due on a loop that ended before it ran
            loop.call_soon(self._flush)
            self._flush_on = loop
        if out not in self._dirty:
            self._dirty.append(out)

    def _flush(self) -> None:
        dirty, self._dirty, self._flush_on = self._dirty, [], None
        for out in dirty:
            with contextlib.suppress(ValueError, OSError):  # closed meanwhile
                out.flush()

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg


_STDOUT = _Stdout()


def _stdout_logger(*_args: object) -> _Stdout:
    return _STDOUT


def drop_sensitive(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for key in REDACTED_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


class Throttle:
    """At most one line for each key every `seconds`, for lines that can come once a
    request: a flood of forged callbacks, or every callback of a database outage, must not
    become a flood of log lines (the metrics count each one). The first line of a key goes
    out at once; the next one due says how many were `left_out` since."""

    def __init__(self, seconds: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._next: dict[Hashable, float] = {}
        self._left_out: dict[Hashable, int] = {}

    def due(self, key: Hashable) -> int | None:
        """None: leave this line out; else how many lines of `key` were left out before it."""
        now = self._clock()
        if now < self._next.get(key, -math.inf):
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return None
        if len(self._next) >= THROTTLE_KEYS_MAX:
            self._forget(now)
            if len(self._next) >= THROTTLE_KEYS_MAX:  # all of them recent: start again
                self._next.clear()
                self._left_out.clear()
        self._next[key] = now + self.seconds
        return self._left_out.pop(key, 0)

    def _forget(self, now: float) -> None:
        """Keys whose time is past (their count is 0 or told with their next line: gone)."""
        for key in [key for key, at in self._next.items() if at <= now]:
            del self._next[key]
            self._left_out.pop(key, None)
