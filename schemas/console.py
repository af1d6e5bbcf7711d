"""The operator's read commands: `tasks`, `show`, `audit`, `export` and `changes`.

They only read, over a running service's `/v1` admin API (`--url`, `--token`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx
from rich.console import Console, RenderableType
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.errors import ConfigError, LedgerError
from schemas.settings import PREFIX
from schemas.states import State

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_SECONDS = 10.0
EXPORT_READ_TIMEOUT_SECONDS = 120.0
FOLLOW_WAIT_SECONDS = 25
MAX_PAGE = 500
DEFAULT_TASK_LIMIT = 50
PROGRESS_EVERY_ROWS = 500
PIPE_WIDTH_COLUMNS = 1000
REQUEST_FIELDS_SHOWN = ("duration", "seconds", "resolution", "size", "aspect_ratio")
_REF = re.compile(r"[A-Za-z0-9_-]+")

Command = Callable[["AdminApi", argparse.Namespace], int]


class CommandError(LedgerError):
    """A read command could not do its job; the message is the one line the operator sees."""


class ApiError(CommandError):
    """The admin API could not be reached, or refused the request."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


# -- the API -------------------------------------------------------------------


class AdminApi:
    """The service's `/v1` read endpoints; the one place that catches httpx errors here."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def get(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        read_timeout: float = TIMEOUT_SECONDS,
    ) -> dict[str, Any]:
        """The JSON object at `path`."""
        with self.stream(path, params, read_timeout=read_timeout) as response:
            response.read()
        try:
            body = response.json()
        except ValueError:
            raise ApiError(
                f"{path} did not answer JSON", status_code=response.status_code
            ) from None
        if not isinstance(body, dict):
            raise ApiError(f"{path} did not answer a JSON object", status_code=response.status_code)
        return body

    @contextmanager
    def stream(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        read_timeout: float = TIMEOUT_SECONDS,
    ) -> Iterator[httpx.Response]:
        """A 2xx response whose body is read as it arrives; any other answer raises."""
        timeout = httpx.Timeout(TIMEOUT_SECONDS, read=read_timeout)
        try:
            with self.http.stream("GET", path, params=query(params), timeout=timeout) as response:
                _check(response)
                yield response
        except httpx.HTTPError as exc:
            raise ApiError(_failure(exc, str(self.http.base_url).rstrip("/"))) from exc


def query(params: Mapping[str, Any] | None) -> dict[str, str]:
    """Query parameters as the API reads them: no empty values, `true` for flags."""
    shown = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
    return {k: "true" if v is True else str(v) for k, v in shown.items()}


def _check(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    status = response.status_code
    if status == 401:
        raise ApiError(
            f"the service refused the admin token (401): pass --token or set {PREFIX}ADMIN_TOKEN",
            status_code=status,
        )
    raise ApiError(f"the service answered {status}: {_reason(response)}", status_code=status)


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return text(body["message"])
    return response.reason_phrase or "no reason given"


def _failure(exc: httpx.HTTPError, url: str) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach the service at {url}: {text(exc) or 'connection failed'}"
    if isinstance(exc, httpx.TimeoutException):
        return f"the service at {url} did not answer in time ({type(exc).__name__})"
    return f"the request to {url} failed: {type(exc).__name__}: {text(exc)}"


@contextmanager
def open_api(url: str, token: str, transport: httpx.BaseTransport | None) -> Iterator[AdminApi]:
    """An `AdminApi` over a client sending the admin token; `transport` lets tests answer."""
    headers = {"authorization": f"Bearer {token}", "user-agent": "taskledger-cli"}
    with httpx.Client(base_url=url, headers=headers, transport=transport) as http:
        yield AdminApi(http)


# -- the command line ----------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the read commands to the `taskledger` parser."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", type=_url, help=f"default: ${PREFIX}URL or {DEFAULT_URL}")
    connection.add_argument("--token", help=f"admin token; default: ${PREFIX}ADMIN_TOKEN")
    _add_tasks(commands.add_parser("tasks", parents=[connection], help="list tasks as a table"))
    show = commands.add_parser("show", parents=[connection], help="a task and its timeline")
    show.add_argument("ref", type=_ref, help="the task's ref (tl_…)")
    show.add_argument("--json", action="store_true", help="print the API's JSON")
    audit = commands.add_parser("audit", parents=[connection], help="the per-provider summary")
    _add_window(audit)
    audit.add_argument("--json", action="store_true", help="print the API's JSON")
    _add_export(commands.add_parser("export", parents=[connection], help="stream every task"))
    _add_changes(commands.add_parser("changes", parents=[connection], help="the change feed"))


def _add_tasks(parser: argparse.ArgumentParser) -> None:
    _add_filters(parser)
    parser.add_argument("--limit", type=_positive, default=DEFAULT_TASK_LIMIT, metavar="N")
    parser.add_argument("--json", action="store_true", help="print the tasks as JSON")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", choices=[s.value for s in State])
    parser.add_argument("--provider")
    parser.add_argument("--owner")
    _add_window(parser)
    parser.add_argument("--conflict", action="store_true", help="only tasks in conflict")
    parser.add_argument("--recovered", action="store_true", help="only tasks recovered by polls")
    parser.add_argument("--stuck", action="store_true", help="only open tasks, oldest first")


def _add_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=_iso_time, metavar="ISO", help="created at or after")
    parser.add_argument("--until", type=_iso_time, metavar="ISO", help="created before")


def _add_export(parser: argparse.ArgumentParser) -> None:
    _add_filters(parser)
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="default: stdout")


def _add_changes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--after", type=_seq, default=0, metavar="SEQ", help="start after SEQ")
    parser.add_argument("--follow", action="store_true", help="keep waiting for new changes")
    parser.add_argument("--limit", type=_positive, metavar="N", help="stop after N changes")


def _iso_time(raw: str) -> str:
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {raw!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number above 0: {raw!r}")
    return int(raw)


def _seq(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"not a sequence number: {raw!r}")
    return int(raw)


def _ref(raw: str) -> str:
    if not _REF.fullmatch(raw):
        raise argparse.ArgumentTypeError(f"not a task ref: {raw!r}")
    return raw


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {raw!r}")
    return raw.rstrip("/")


def run(
    args: argparse.Namespace, environ: Mapping[str, str], transport: httpx.BaseTransport | None
) -> int:
    """Run one read command against the service the arguments and environment name."""
    url = args.url or _url_from(environ)
    token = args.token or environ.get(PREFIX + "ADMIN_TOKEN")
    if not token:
        raise ConfigError(f"no admin token: pass --token or set {PREFIX}ADMIN_TOKEN")
    try:
        with open_api(url, token, transport) as api:
            return COMMANDS[args.command](api, args)
    except KeyboardInterrupt:
        print("taskledger: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 1


def _url_from(environ: Mapping[str, str]) -> str:
    try:
        return _url(environ.get(PREFIX + "URL") or DEFAULT_URL)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{PREFIX}URL is {exc}") from None


def _silence_stdout() -> None:
    """The reader went away (`| head`): send the rest to /dev/null, quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        return


# -- tasks ---------------------------------------------------------------------

TASK_COLUMNS = (
    "ref",
    "provider",
    "state",
    "progress",
    "confirmed",
    "conflict",
    "created",
    "terminal",
    "provider task id",
    "attention",
)


def tasks_command(api: AdminApi, args: argparse.Namespace) -> int:
    tasks, more = fetch_tasks(api, task_filters(args), args.limit)
    if args.json:
        print_json(tasks)
    elif not tasks:
        print("taskledger: no task matches", file=sys.stderr)
    else:
        show(task_table(tasks), fit=False)  # like `ps`: long rows wrap, never fold
    if more and not args.json:
        print(
            f"taskledger: showing the first {len(tasks)}; raise --limit for more", file=sys.stderr
        )
    return 0


def task_filters(args: argparse.Namespace) -> dict[str, Any]:
    names = ("state", "provider", "owner", "since", "until", "conflict", "recovered", "stuck")
    return {name: getattr(args, name) for name in names}


def fetch_tasks(
    api: AdminApi, filters: Mapping[str, Any], limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Up to `limit` tasks, following the cursor; and whether more match."""
    tasks: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(tasks) < limit:
        size = min(limit - len(tasks), MAX_PAGE)
        page = api.get("/v1/tasks", {**filters, "limit": size, "cursor": cursor})
        rows = objects(page.get("tasks"))
        tasks += rows
        cursor = page.get("next_cursor") or None
        if cursor is None or not rows:
            return tasks[:limit], False
    return tasks[:limit], True


def task_table(tasks: Iterable[Mapping[str, Any]]) -> Table:
    table = new_table(*TASK_COLUMNS)
    for task in tasks:
        table.add_row(
            text(task.get("ref")),
            text(task.get("provider")),
            text(task.get("state")),
            percent(task.get("progress")),
            yes_no(task.get("confirmed")),
            yes_no(task.get("conflict")),
            clock_text(task.get("created_at")),
            clock_text(task.get("terminal_at")),
            text(task.get("provider_task_id")),
            text(task.get("attention")),
        )
    return table


# -- show ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a task's timeline."""

    at: datetime
    rank: int  # at the same instant: registration, submission, evidence, then transitions
    order: int
    what: str
    detail: str


_NEVER = datetime.min.replace(tzinfo=UTC)


def show_command(api: AdminApi, args: argparse.Namespace) -> int:
    try:
        task = api.get(f"/v1/tasks/{quote(args.ref, safe='')}")
    except ApiError as exc:
        if exc.status_code == 404:
            raise CommandError(f"no task has the ref {args.ref}") from exc
        raise
    if args.json:
        print_json(task)
        return 0
    show(facts_table(task_facts(task)), "", timeline_table(timeline(task)))
    return 0


def task_facts(task: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the ledger holds about a task, minus what may carry a secret or a prompt."""
    facts = [
        ("ref", text(task.get("ref"))),
        ("provider", text(task.get("provider"))),
        ("provider task id", text(task.get("provider_task_id"))),
        ("owner", text(task.get("owner"))),
        ("model", text(task.get("model"))),
        ("request", request_summary(task.get("request"))),
        ("state", f"{text(task.get('state'))}, from {text(task.get('state_source'))}"),
        ("progress", percent(task.get("progress"))),
        ("confirmed", yes_no(task.get("confirmed"))),
        ("conflict", yes_no(task.get("conflict"))),
        ("recovered by poll", yes_no(task.get("recovered"))),
        ("submission", text(task.get("submission")) or "by the owner"),
        ("needs attention", text(task.get("attention"))),
        ("result", result_summary(task.get("result"))),
        ("created", clock_text(task.get("created_at"), precise=True)),
        ("last event", clock_text(task.get("last_event_at"), precise=True)),
        ("terminal", clock_text(task.get("terminal_at"), precise=True)),
        ("next poll", clock_text(task.get("next_poll_at"), precise=True)),
        ("poll attempts", text(task.get("poll_attempts"))),
        ("version", text(task.get("version"))),
    ]
    return [(name, value) for name, value in facts if value]


def request_summary(request: Any) -> str:
    """The request's length and size only: the rest (the prompt above all) is customer content."""
    if not isinstance(request, dict):
        return ""
    nested = request.get("input")
    fields = {**request, **nested} if isinstance(nested, dict) else request
    shown = [(k, fields[k]) for k in REQUEST_FIELDS_SHOWN if _scalar(fields.get(k))]
    return ", ".join(f"{k}={text(v)}" for k, v in shown)


def result_summary(result: Any) -> str:
    """What came of the task, without its media URLs (see --json for those)."""
    if not isinstance(result, dict):
        return ""
    parts = []
    if isinstance(result.get("urls"), list):
        parts.append(f"{len(result['urls'])} media URL(s), see --json")
    error = result.get("error")
    if isinstance(error, dict):
        parts.append(f"error {text(error.get('code')) or '-'}: {text(error.get('message'))}")
    if result.get("lost_reason"):
        parts.append(f"lost: {text(result['lost_reason'])}")
    others = sorted(set(result) - {"urls", "error", "lost_reason"})
    if others:
        parts.append("also " + ", ".join(text(k) for k in others))
    return "; ".join(parts)


def timeline(task: Mapping[str, Any]) -> list[Entry]:
    """Registration, submission, deliveries, polls and transitions, in the order they happened."""
    events = _mapping(task.get("timeline"))
    entries = [registration_entry(task), *submission_entries(task)]
    entries += [delivery_entry(d) for d in objects(events.get("deliveries"))]
    entries += [poll_entry(p) for p in objects(events.get("polls"))]
    entries += [transition_entry(t) for t in objects(events.get("transitions"))]
    return sorted(entries, key=lambda e: (e.at, e.rank, e.order))


def registration_entry(task: Mapping[str, Any]) -> Entry:
    owner = text(task.get("owner")) or "-"
    detail = f"{text(task.get('provider'))} {text(task.get('model'))}, owner {owner}"
    return Entry(moment(task.get("created_at")), 0, 0, "registered", detail)


def submission_entries(task: Mapping[str, Any]) -> list[Entry]:
    if not task.get("submission"):
        return []
    at = moment(task.get("submitted_at") or task.get("created_at"))
    return [Entry(at, 1, 0, "submission", f"by taskledger: {text(task['submission'])}")]


def delivery_entry(delivery: Mapping[str, Any]) -> Entry:
    fields = {
        "state": delivery.get("state"),
        "outcome": delivery.get("outcome"),
        "reason": delivery.get("reason"),
        "auth": delivery.get("auth"),
        "key": _short(text(delivery.get("delivery_key"))),
    }
    detail = key_values(fields)
    duplicates = delivery.get("duplicate_count") or 0
    if duplicates:
        last = clock_text(delivery.get("last_seen_at"), precise=True)
        detail += f" duplicates={text(duplicates)} (last {last})"
    what = f"delivery #{text(delivery.get('id'))}"
    return Entry(moment(delivery.get("received_at")), 2, _int(delivery.get("id")), what, detail)


def poll_entry(poll: Mapping[str, Any]) -> Entry:
    fields = {
        "http": poll.get("http_status"),
        "state": poll.get("state"),
        "progress": percent(poll.get("progress")) or None,
        "outcome": poll.get("outcome"),
        "error": poll.get("error"),
    }
    what = f"poll #{text(poll.get('id'))}"
    return Entry(moment(poll.get("observed_at")), 2, _int(poll.get("id")), what, key_values(fields))


def transition_entry(transition: Mapping[str, Any]) -> Entry:
    before = text(transition.get("from_state")) or "(new)"
    source = text(transition.get("source"))
    detail = f"{before} → {text(transition.get('to_state'))} via {source}"
    evidence = {"webhook": "delivery", "poll": "poll"}.get(source)
    if evidence and transition.get("source_id") is not None:
        detail += f" ({evidence} #{text(transition['source_id'])})"
    seq = transition.get("seq")
    return Entry(moment(transition.get("at")), 3, _int(seq), f"transition #{text(seq)}", detail)


def facts_table(facts: Iterable[tuple[str, str]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in facts:
        table.add_row(name, value)
    return table


def timeline_table(entries: Iterable[Entry]) -> Table:
    table = new_table("at (UTC)", "event", "detail", wrap=("detail",))
    for entry in entries:
        at = "" if entry.at == _NEVER else clock_text(entry.at.isoformat(), precise=True)
        table.add_row(at, entry.what, entry.detail)
    return table


# -- audit ---------------------------------------------------------------------


def audit_command(api: AdminApi, args: argparse.Namespace) -> int:
    body = api.get("/v1/audit", {"since": args.since, "until": args.until})
    if args.json:
        print_json(body)
        return 0
    providers = objects(body.get("providers"))
    window = f"{text(body.get('since')) or 'the beginning'} to {text(body.get('until')) or 'now'}"
    if not providers:
        print(f"taskledger: no task created from {window}", file=sys.stderr)
        return 0
    show(f"audit of the tasks created from {window}", audit_table(providers))
    return 0


def audit_table(providers: list[dict[str, Any]]) -> Table:
    """One column per provider, one row per figure: a handful of providers fit any terminal."""
    table = new_table("", *(text(p.get("provider")) for p in providers))
    for column in list(table.columns)[1:]:
        column.justify = "right"
    for label, figure in audit_rows(providers):
        table.add_row(label, *(figure(p) for p in providers))
    return table


Figure = Callable[[Mapping[str, Any]], str]


def audit_rows(providers: list[dict[str, Any]]) -> list[tuple[str, Figure]]:
    states = _ordered_states({s for p in providers for s in _mapping(p.get("by_state"))})
    sizes = sorted({r for p in providers for r in _mapping(p.get("billable_seconds"))})
    return [
        ("tasks", _field("tasks")),
        *[(f"  {s}", _nested("by_state", s, lambda n: number(n or 0))) for s in states],
        ("terminal", _field("terminal")),
        ("recovered by poll", _field("recovered_by_poll")),
        ("missed callback rate", lambda p: rate(p.get("missed_callback_rate"))),
        ("duplicate deliveries", _field("duplicates")),
        ("unmatched deliveries", _field("unmatched")),
        ("unrecognized deliveries", _field("unrecognized")),
        ("ignored deliveries", _field("ignored")),
        ("tasks needing attention", _field("needs_attention")),
        ("conflicts", _field("conflicts")),
        ("lost", _field("lost")),
        ("time to terminal, median", _nested("time_to_terminal_seconds", "median", duration)),
        ("time to terminal, p95", _nested("time_to_terminal_seconds", "p95", duration)),
        *[(f"billable seconds, {text(r)}", _nested("billable_seconds", r)) for r in sizes],
        ("cost", lambda p: money(p.get("cost"))),
    ]


def _field(name: str) -> Figure:
    return lambda provider: number(provider.get(name))


def _nested(name: str, key: str, render: Callable[[Any], str] | None = None) -> Figure:
    def figure(provider: Mapping[str, Any]) -> str:
        return (render or number)(_mapping(provider.get(name)).get(key))

    return figure


def _ordered_states(names: set[str]) -> list[str]:
    known = [s.value for s in State if s.value in names]
    return known + sorted(names - set(known))


# -- export --------------------------------------------------------------------


def export_command(api: AdminApi, args: argparse.Namespace) -> int:
    params = {**task_filters(args), "format": args.format}
    path: Path | None = None if args.output in (None, Path("-")) else args.output
    live = _stderr_is_terminal() and (path is not None or not _stdout_is_terminal())
    read_timeout = EXPORT_READ_TIMEOUT_SECONDS
    with (
        api.stream("/v1/export", params, read_timeout=read_timeout) as response,
        destination(path) as out,
        progress(live) as report,
    ):
        rows = copy_rows(lines(response.iter_text()), out, RowCounter(args.format), report)
    if path is not None or live:
        where = f" to {path}" if path is not None else ""
        print(f"taskledger: exported {rows} rows{where}", file=sys.stderr)
    return 0


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


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


# -- changes -------------------------------------------------------------------


def changes_command(api: AdminApi, args: argparse.Namespace) -> int:
    feed = ChangeFeed(api, after=args.after, limit=args.limit, follow=args.follow)
    try:
        feed.run()
    except KeyboardInterrupt:
        if not args.follow:
            raise
        print(f"taskledger: stopped after seq {feed.after}", file=sys.stderr)
    return 0


@dataclass
class ChangeFeed:
    """Prints each change once, in seq order, from `after` on; following, it long-polls."""

    api: AdminApi
    after: int
    limit: int | None
    follow: bool
    printed: int = 0

    def run(self) -> None:
        while self.limit is None or self.printed < self.limit:
            room = MAX_PAGE if self.limit is None else min(MAX_PAGE, self.limit - self.printed)
            if not self.print_page(self.fetch(room), room) and not self.follow:
                return

    def fetch(self, size: int) -> dict[str, Any]:
        wait = FOLLOW_WAIT_SECONDS if self.follow else 0
        params = {"after": self.after, "limit": size, "wait": wait}
        return self.api.get("/v1/changes", params, read_timeout=wait + TIMEOUT_SECONDS)

    def print_page(self, page: Mapping[str, Any], room: int) -> int:
        """Print at most `room` changes past `after`; how many were printed."""
        by_seq = {_int(c.get("seq")): c for c in objects(page.get("changes"))}
        fresh = [change for seq, change in sorted(by_seq.items()) if seq > self.after]
        for change in fresh[:room]:
            print(change_line(change), flush=True)
            self.after = _int(change.get("seq"))
        if len(fresh) <= room:
            self.after = max(self.after, _int(page.get("last_seq")))
        self.printed += min(len(fresh), room)
        return min(len(fresh), room)


def change_line(change: Mapping[str, Any]) -> str:
    """`seq  at  task  from → to  source  now <state>`, aligned for reading and grep."""
    task = _mapping(change.get("task"))
    before = text(change.get("from_state")) or "(new)"
    return (
        f"{text(change.get('seq')):>8}  {clock_text(change.get('at'), precise=True)}  "
        f"{text(change.get('task_ref'))}  {before:>9} → {text(change.get('to_state')):<9}  "
        f"{text(change.get('source')):<7}  now {text(task.get('state'))}"
    )


COMMANDS: dict[str, Command] = {
    "tasks": tasks_command,
    "show": show_command,
    "audit": audit_command,
    "export": export_command,
    "changes": changes_command,
}


# -- rendering -----------------------------------------------------------------


def show(*renderables: RenderableType, fit: bool = True) -> None:
    """Print with rich, fitted to the terminal; else (a pipe, or `fit=False`) one line per row."""
    if fit and _stdout_is_terminal():
        out = Console(markup=False, highlight=False, emoji=False)
        out.print(*renderables, sep="\n")
        return
    buffer = io.StringIO()
    out = Console(file=buffer, width=PIPE_WIDTH_COLUMNS, markup=False, highlight=False, emoji=False)
    out.print(*renderables, sep="\n")
    sys.stdout.writelines(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def new_table(*columns: str, wrap: Iterable[str] = ()) -> Table:
    """A borderless table; on a narrow terminal only the `wrap` columns fold."""
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column not in wrap)
    return table


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def text(value: Any) -> str:
    """A value fit for a terminal: control characters (an ANSI escape from a sender) made inert."""
    if value is None:
        return ""
    raw = value if isinstance(value, str) else str(value)
    return "".join(c if c.isprintable() else "?" for c in raw)


def moment(value: Any) -> datetime:
    """An API timestamp as an aware UTC datetime; a missing or unreadable one sorts first."""
    if not isinstance(value, str):
        return _NEVER
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return _NEVER
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)


def clock_text(value: Any, *, precise: bool = False) -> str:
    when = moment(value)
    if when == _NEVER:
        return text(value)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else f"{when:%Y-%m-%d %H:%M:%S}"


def percent(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    return f"{value:.0f}%"


def rate(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value * 100:.1f}%"


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else text(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def money(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:,.2f}"


def duration(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    minutes, seconds = divmod(float(value), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02.0f}s" if minutes else f"{seconds:.1f}s"


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def key_values(fields: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={text(v)}" for k, v in fields.items() if v is not None and v != "")


def objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _short(value: str, width: int = 20) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
