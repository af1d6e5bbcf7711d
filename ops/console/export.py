"""`taskledger export`: every matching task streamed to stdout or a file, its rows counted."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ops.console.api import AdminApi, CommandError
from ops.console.render import stdout_is_terminal

EXPORT_READ_TIMEOUT_SECONDS = 120.0
PROGRESS_EVERY_ROWS = 500
# The media type the service declares for each format: anything else is not its export.
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


def export(api: AdminApi, params: dict[str, Any], path: Path | None) -> None:
    """Stream `/v1/export` to `path` (None: stdout); say how many rows went where."""
    live = _stderr_is_terminal() and (path is not None or not stdout_is_terminal())
    media_type = MEDIA_TYPES[params["format"]]
    read_timeout = EXPORT_READ_TIMEOUT_SECONDS
    with (
        api.stream(
            "/v1/export", params, media_type=media_type, read_timeout=read_timeout
        ) as response,
        destination(path) as out,
        progress(live) as report,
    ):
        rows = copy_rows(lines(response.iter_text()), out, RowCounter(params["format"]), report)
    if path is not None or live:
        where = f" to {path}" if path is not None else ""
        print(f"taskledger: exported {rows} rows{where}", file=sys.stderr)


class RowCounter:
    """Counts the records of a JSON-lines or CSV stream line by line (a CSV cell may span lines)."""

    def __init__(self, kind: str) -> None:
        self.csv = kind == "csv"
        self.rows = 0
        self._header = self.csv
        self._quoted = False

    def feed(self, line: str) -> None:
        if not self.csv:
            self.rows += bool(line.strip())
            return
        if line.count('"') % 2:
            self._quoted = not self._quoted
        if self._quoted or not line.strip():
            return
        if self._header:
            self._header = False
        else:
            self.rows += 1


def lines(chunks: Iterable[str]) -> Iterator[str]:
    """Whole lines, each with its own line ending, out of chunks cut anywhere."""
    parts: list[str] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find("\n", start)) != -1:
            parts.append(chunk[start : end + 1])
            yield "".join(parts)
            parts.clear()
            start = end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        yield "".join(parts)


def copy_rows(
    source: Iterable[str], out: TextIO, counter: RowCounter, report: Callable[[int], None]
) -> int:
    for line in source:
        out.write(line)
        counter.feed(line)
        if counter.rows % PROGRESS_EVERY_ROWS == 0:
            report(counter.rows)
    out.flush()
    report(counter.rows)
    return counter.rows


@contextmanager
def destination(path: Path | None) -> Iterator[TextIO]:
    """Stdout, or `path` written whole: a failed export leaves no half-written file behind."""
    if path is None:
        yield sys.stdout
        return
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            yield out
        partial.replace(path)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def progress(live: bool) -> Iterator[Callable[[int], None]]:
    """A `report(rows)` callable: a spinner with the count on stderr, or nothing."""
    if not live:
        yield lambda rows: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.completed:,} rows written"), TimeElapsedColumn())
    stderr = Console(stderr=True)
    with Progress(
        *columns, console=stderr, transient=True, redirect_stdout=False, redirect_stderr=False
    ) as bar:
        task = bar.add_task("export", total=None)
        yield lambda rows: bar.update(task, completed=rows)


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
