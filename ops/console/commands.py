"""The operator's commands: `tasks`, `show`, `audit`, `export` and `changes` read;
`endpoints` and `notify` (in `endpoints.py`) change notifications; `send-test` (in
`send_test.py`) sends a provider's callback; `keys` (in `keys.py`) makes, lists and revokes
API keys. All go through a running service's `/v1` admin API (`--url`, `--token`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ops.console import endpoints, keys, send_test
from ops.console.api import TIMEOUT_SECONDS, AdminApi, ApiError, CommandError, open_api
from ops.console.arguments import iso_time
from ops.console.export import export
from ops.console.render import (
    as_int,
    audit_table,
    change_json,
    change_line,
    objects,
    print_json,
    show,
    task_table,
    text,
)
from ops.console.timeline import (
    TASK_FIELDS,
    facts_table,
    left_out,
    task_facts,
    timeline,
    timeline_table,
)
from schemas.errors import ConfigError
from schemas.settings import PREFIX
from schemas.states import State

DEFAULT_URL = "http://127.0.0.1:8000"
FOLLOW_WAIT_SECONDS = 25
MAX_PAGE = 500
DEFAULT_TASK_LIMIT = 50
MAX_PORT = 65_535
_REF = re.compile(r"[A-Za-z0-9_-]+")

Command = Callable[[AdminApi, argparse.Namespace], int]


# -- the command line ----------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the console's commands to the `taskledger` parser."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", type=_url, help=f"default: ${PREFIX}URL or {DEFAULT_URL}")
    connection.add_argument(
        "--token", type=_token, help=f"admin token or API key; default: ${PREFIX}ADMIN_TOKEN"
    )
    endpoints.add_commands(commands, connection)
    keys.add_commands(commands, connection)
    send_test.add_command(commands, connection)
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
    parser.add_argument("--since", type=iso_time, metavar="ISO", help="created at or after")
    parser.add_argument("--until", type=iso_time, metavar="ISO", help="created before")


def _add_export(parser: argparse.ArgumentParser) -> None:
    _add_filters(parser)
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="default: stdout")


def _add_changes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--after", type=_seq, default=0, metavar="SEQ", help="start after SEQ")
    parser.add_argument("--follow", action="store_true", help="keep waiting for new changes")
    parser.add_argument("--limit", type=_positive, metavar="N", help="stop after N changes")
    parser.add_argument("--json", action="store_true", help="one JSON object per change")


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
    """An http(s) URL httpx can send to: one it cannot parse (`http://[::1`) or with a port
    no socket has (`:99999`) is refused here, not as a traceback or "connection refused"."""
    if not raw.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {raw!r}")
    try:
        parsed = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(f"not a valid URL: {raw!r} ({text(exc)})") from None
    if not parsed.host:
        raise argparse.ArgumentTypeError(f"not a valid URL: {raw!r} (no host)")
    if parsed.port is not None and not 1 <= parsed.port <= MAX_PORT:
        raise argparse.ArgumentTypeError(
            f"not a valid URL: {raw!r} (port {parsed.port} is not in 1-{MAX_PORT})"
        )
    return raw.rstrip("/")


def _token(raw: str) -> str:
    """A token that fits an HTTP header: printable ASCII, and not empty (an empty `--token`
    must not quietly mean the admin token of `.env`)."""
    if not raw:
        raise argparse.ArgumentTypeError("is empty: pass the admin token or an API key")
    if not (raw.isascii() and raw.isprintable()):
        raise argparse.ArgumentTypeError(
            "must be printable ASCII, as the admin token and API keys are"
        )
    return raw


def run(
    args: argparse.Namespace, environ: Mapping[str, str], transport: httpx.BaseTransport | None
) -> int:
    """Run one command against the service the arguments and environment name."""
    url = args.url or _url_from(environ)
    admin_token = _admin_token_from(environ)
    token = args.token if args.token is not None else admin_token
    if token is None:
        raise ConfigError(f"no admin token: pass --token or set {PREFIX}ADMIN_TOKEN")
    token_name = "the admin token" if token == admin_token else "the token"
    try:
        with open_api(url, token, transport, token_name=token_name) as api:
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


def _admin_token_from(environ: Mapping[str, str]) -> str | None:
    raw = environ.get(PREFIX + "ADMIN_TOKEN")
    if not raw:
        return None
    try:
        return _token(raw)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{PREFIX}ADMIN_TOKEN {exc}") from None


def _silence_stdout() -> None:
    """The reader went away (`| head`): send the rest to /dev/null, quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        return


# -- the commands --------------------------------------------------------------


def tasks_command(api: AdminApi, args: argparse.Namespace) -> int:
    tasks, more = fetch_tasks(api, task_filters(args), args.limit)
    if args.json:
        print_json(tasks)
    elif not tasks:
        print("taskledger: no task matches", file=sys.stderr)
    else:
        # like `ps`: long rows wrap, never fold
        show(task_table(tasks, stuck=args.stuck), fit=False)
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
        params = {**filters, "limit": size, "cursor": cursor}
        page = api.get("/v1/tasks", params, needs=("tasks", "next_cursor"))
        rows = objects(page.get("tasks"))
        tasks += rows
        cursor = page.get("next_cursor") or None
        if cursor is None or not rows:
            return tasks[:limit], False
    return tasks[:limit], True


def show_command(api: AdminApi, args: argparse.Namespace) -> int:
    try:
        task = api.get(f"/v1/tasks/{quote(args.ref, safe='')}", needs=TASK_FIELDS)
    except ApiError as exc:
        if exc.status_code == 404:
            raise CommandError(f"no task has the ref {args.ref}") from exc
        raise
    if args.json:
        print_json(task)
        return 0
    show(facts_table(task_facts(task)), "", timeline_table(timeline(task)), *left_out(task))
    return 0


def audit_command(api: AdminApi, args: argparse.Namespace) -> int:
    asked = {"since": args.since, "until": args.until}
    body = api.get("/v1/audit", asked, needs=("providers",))
    if args.json:
        print_json(body)
        return 0
    providers = objects(body.get("providers"))
    window = f"{text(body.get('since')) or 'the beginning'} to {text(body.get('until')) or 'now'}"
    notified = endpoints.notifications_lines(body.get("notifications"))
    if not providers:
        print(f"taskledger: no task created from {window}", file=sys.stderr)
        if notified:
            show(*notified)
        return 0
    show(f"audit of the tasks created from {window}", audit_table(providers), *notified)
    return 0


def export_command(api: AdminApi, args: argparse.Namespace) -> int:
    params = {**task_filters(args), "format": args.format}
    export(api, params, None if args.output in (None, Path("-")) else args.output)
    return 0


def changes_command(api: AdminApi, args: argparse.Namespace) -> int:
    feed = ChangeFeed(
        api, after=args.after, limit=args.limit, follow=args.follow, as_json=args.json
    )
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
    as_json: bool = False

    def run(self) -> None:
        while self.limit is None or self.printed < self.limit:
            room = MAX_PAGE if self.limit is None else min(MAX_PAGE, self.limit - self.printed)
            if not self.print_page(self.fetch(room), room) and not self.follow:
                return

    def fetch(self, size: int) -> dict[str, Any]:
        wait = FOLLOW_WAIT_SECONDS if self.follow else 0
        params = {"after": self.after, "limit": size, "wait": wait}
        return self.api.get(
            "/v1/changes",
            params,
            needs=("changes", "last_seq"),
            read_timeout=wait + TIMEOUT_SECONDS,
        )

    def print_page(self, page: Mapping[str, Any], room: int) -> int:
        """Print at most `room` changes past `after`; how many were printed."""
        by_seq = {as_int(c.get("seq")): c for c in objects(page.get("changes"))}
        fresh = [change for seq, change in sorted(by_seq.items()) if seq > self.after]
        for change in fresh[:room]:
            print(change_json(change) if self.as_json else change_line(change), flush=True)
            self.after = as_int(change.get("seq"))
        if len(fresh) <= room:
            self.after = max(self.after, as_int(page.get("last_seq")))
        self.printed += min(len(fresh), room)
        return min(len(fresh), room)


COMMANDS: dict[str, Command] = {
    "tasks": tasks_command,
    "show": show_command,
    "audit": audit_command,
    "export": export_command,
    "changes": changes_command,
    "endpoints": endpoints.endpoints_command,
    "notify": endpoints.notify_command,
    "keys": keys.keys_command,
    "send-test": send_test.send_test_command,
}
