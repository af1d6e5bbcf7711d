"""`taskledger endpoints …` and `taskledger notify retry`: where a running service sends its
events, changed through its admin API. A signing secret is printed the one time the service
shows it (on creation and rotation), never again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from rich.console import RenderableType
from rich.table import Table

from ops.console.api import AdminApi, ApiError, CommandError
from ops.console.arguments import identifier, iso_time, json_output
from ops.console.render import (
    as_mapping,
    clock_text,
    duration,
    new_table,
    number,
    objects,
    print_json,
    print_listing,
    print_shown_once,
    show,
    text,
    yes_no,
)
from ops.console.timeline import facts_table
from schemas.events import EVENT_TYPES

SHOWN_ONCE = (
    "taskledger: this is the only time the service shows this secret: store it now where the"
    " endpoint's consumer verifies signatures (Standard Webhooks); `endpoints rotate` makes a"
    " new one"
)
ENDPOINT_COLUMNS = (
    "id",
    "kind",
    "url",
    "state",
    "pending",
    "delivered",
    "failed",
    "last success",
    "failing since",
)
FAILURE_COLUMNS = ("at (UTC)", "status", "error", "message", "task")
# The fields the commands read of each answer: without them it is not taskledger's.
ENDPOINT_FIELDS = ("id", "url", "enabled")
SECRET_FIELDS = (*ENDPOINT_FIELDS, "secret")
REQUEUED = ("requeued",)
T = TypeVar("T")
Command = Callable[[AdminApi, argparse.Namespace], int]


# -- the command line --------------------------------------------------------------------


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
) -> None:
    """Add `endpoints` and `notify` to the `taskledger` parser."""
    output = json_output()
    group = commands.add_parser("endpoints", help="where the service sends its events")
    sub = group.add_subparsers(dest="endpoints_command", required=True)
    parents = [connection, output]
    create = sub.add_parser("create", parents=parents, help="add an endpoint; prints its secret")
    create.add_argument("endpoint_url", metavar="URL", help=_URL_HELP)
    _add_fields(create)
    create.add_argument(
        "--include-unconfirmed", action="store_true", help="also unconfirmed (unsigned) states"
    )
    sub.add_parser("list", parents=parents, help="every endpoint and how its deliveries go")
    _with_id(sub.add_parser("show", parents=parents, help="an endpoint and its recent failures"))
    _add_update(sub.add_parser("update", parents=parents, help="change an endpoint"))
    _with_id(sub.add_parser("enable", parents=parents, help="send to the endpoint again"))
    _with_id(sub.add_parser("disable", parents=parents, help="stop sending to the endpoint"))
    _with_id(sub.add_parser("delete", parents=[connection], help="remove the endpoint"))
    rotate = _with_id(sub.add_parser("rotate", parents=parents, help="a new signing secret"))
    rotate.add_argument(
        "--grace-seconds",
        type=_seconds,
        help="how long the current secret keeps signing too (default: 86400)",
    )
    recover = _with_id(
        sub.add_parser("recover", parents=parents, help="send again what failed since a time")
    )
    recover.add_argument("--since", type=iso_time, required=True, metavar="ISO")
    notify = commands.add_parser("notify", help="notifications: send an event again")
    notify_sub = notify.add_subparsers(dest="notify_command", required=True)
    retry = notify_sub.add_parser(
        "retry", parents=parents, help="send an event again to every endpoint it went to"
    )
    retry.add_argument("msg_id", type=identifier, metavar="MSG_ID", help="the event's msg_…")


_URL_HELP = "https://…, nats://host:4222/subject or amqp(s)://host/vhost?exchange=…"


def _with_id(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("id", type=identifier, metavar="ID", help="the endpoint's id (ep_…)")
    return parser


def _add_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--description")
    parser.add_argument(
        "--provider", action="append", dest="providers", metavar="P", help="only this provider's"
    )
    parser.add_argument(
        "--owner", action="append", dest="owners", metavar="O", help="only this owner's"
    )
    parser.add_argument(
        "--event",
        action="append",
        dest="event_types",
        choices=EVENT_TYPES,
        metavar="TYPE",
        help=f"only these events: {', '.join(EVENT_TYPES)}",
    )


def _add_update(parser: argparse.ArgumentParser) -> None:
    _with_id(parser)
    parser.add_argument("--new-url", metavar="URL", help=_URL_HELP)
    _add_fields(parser)
    for name in ("providers", "owners", "events"):
        parser.add_argument(f"--all-{name}", action="store_true", help=f"drop the {name} filter")
    parser.add_argument(
        "--include-unconfirmed",
        action=argparse.BooleanOptionalAction,
        help="also send unconfirmed (unsigned) states",
    )


def _seconds(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {raw!r}")
    return int(raw)


# -- the commands ------------------------------------------------------------------------


def endpoints_command(api: AdminApi, args: argparse.Namespace) -> int:
    return ENDPOINT_COMMANDS[args.endpoints_command](api, args)


def create_command(api: AdminApi, args: argparse.Namespace) -> int:
    body = {"url": args.endpoint_url, **_filters(args)}
    if args.include_unconfirmed:
        body["include_unconfirmed"] = True
    created = api.send("POST", "/v1/endpoints", body, needs=SECRET_FIELDS)
    _print_with_secret(created, args.json)
    return 0


def list_command(api: AdminApi, args: argparse.Namespace) -> int:
    found = objects(api.get("/v1/endpoints", needs=("endpoints",))["endpoints"])
    empty = "taskledger: no endpoint yet: add one with `taskledger endpoints create URL`"
    print_listing(found, args.json, empty, lambda: endpoints_table(found))
    return 0


def show_command(api: AdminApi, args: argparse.Namespace) -> int:
    endpoint = _found(args.id, lambda: api.get(_path(args.id), needs=ENDPOINT_FIELDS))
    if args.json:
        print_json(endpoint)
        return 0
    failures = objects(as_mapping(endpoint.get("health")).get("recent_failures"))
    shown: list[RenderableType] = [facts_table(endpoint_facts(endpoint))]
    if failures:
        shown += ["", "recent failures", failures_table(failures)]
    show(*shown)
    return 0


def update_command(api: AdminApi, args: argparse.Namespace) -> int:
    body = _filters(args)
    if args.new_url is not None:
        body["url"] = args.new_url
    for flag, field in (
        ("all_providers", "providers"),
        ("all_owners", "owners"),
        ("all_events", "event_types"),
    ):
        if getattr(args, flag):
            body[field] = None
    if args.include_unconfirmed is not None:
        body["include_unconfirmed"] = args.include_unconfirmed
    if not body:
        raise CommandError("nothing to change: see `taskledger endpoints update --help`")
    _print_endpoint(_patched(api, args.id, body), args.json)
    return 0


def enable_command(api: AdminApi, args: argparse.Namespace) -> int:
    _print_endpoint(_patched(api, args.id, {"enabled": True}), args.json)
    return 0


def disable_command(api: AdminApi, args: argparse.Namespace) -> int:
    _print_endpoint(_patched(api, args.id, {"enabled": False}), args.json)
    return 0


def delete_command(api: AdminApi, args: argparse.Namespace) -> int:
    _found(args.id, lambda: api.send_no_content("DELETE", _path(args.id)))
    print(f"taskledger: deleted endpoint {args.id}")
    return 0


def rotate_command(api: AdminApi, args: argparse.Namespace) -> int:
    body = {} if args.grace_seconds is None else {"grace_seconds": args.grace_seconds}
    path = _path(args.id, "rotate")
    rotated = _found(args.id, lambda: api.send("POST", path, body, needs=SECRET_FIELDS))
    _print_with_secret(rotated, args.json)
    return 0


def recover_command(api: AdminApi, args: argparse.Namespace) -> int:
    path = _path(args.id, "recover")
    since = {"since": args.since}
    answer = _found(args.id, lambda: api.send("POST", path, None, since, needs=REQUEUED))
    if args.json:
        print_json(answer)
        return 0
    print(
        f"taskledger: requeued {number(answer.get('requeued'))} failed event(s) of endpoint"
        f" {args.id} made since {args.since}"
    )
    endpoint = api.get(_path(args.id), needs=ENDPOINT_FIELDS)
    if not endpoint.get("enabled"):
        print(
            f"taskledger: endpoint {args.id} is disabled ({text(endpoint.get('disabled_reason'))}):"
            f" nothing is sent until `taskledger endpoints enable {args.id}`",
            file=sys.stderr,
        )
    return 0


def notify_command(api: AdminApi, args: argparse.Namespace) -> int:
    """`notify retry MSG_ID` (its only subcommand)."""
    path = f"/v1/messages/{quote(args.msg_id, safe='')}/retry"
    try:
        answer = api.send("POST", path, needs=REQUEUED)
    except ApiError as exc:
        if exc.status_code == 404:
            raise CommandError(f"no event has the msg id {args.msg_id}") from exc
        raise
    if args.json:
        print_json(answer)
    else:
        requeued = number(answer.get("requeued"))
        print(f"taskledger: requeued event {args.msg_id} for {requeued} endpoint(s)")
    return 0


ENDPOINT_COMMANDS: dict[str, Command] = {
    "create": create_command,
    "list": list_command,
    "show": show_command,
    "update": update_command,
    "enable": enable_command,
    "disable": disable_command,
    "delete": delete_command,
    "rotate": rotate_command,
    "recover": recover_command,
}


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    names = ("description", "providers", "owners", "event_types")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _path(endpoint_id: str, action: str = "") -> str:
    path = f"/v1/endpoints/{quote(endpoint_id, safe='')}"
    return f"{path}/{action}" if action else path


def _patched(api: AdminApi, endpoint_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    path = _path(endpoint_id)
    return _found(endpoint_id, lambda: api.send("PATCH", path, body, needs=ENDPOINT_FIELDS))


def _found(endpoint_id: str, call: Callable[[], T]) -> T:
    """`call()`, with a 404 said as the operator knows it."""
    try:
        return call()
    except ApiError as exc:
        if exc.status_code == 404:
            raise CommandError(f"no endpoint has the id {endpoint_id}") from exc
        raise


def _print_endpoint(endpoint: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(endpoint)
    else:
        show(facts_table(endpoint_facts(endpoint)))


def _print_with_secret(endpoint: dict[str, Any], as_json: bool) -> None:
    """The endpoint and the secret the service shows this once, and a word saying so."""
    secret = f"signing secret: {text(endpoint.get('secret'))}"
    facts = facts_table(endpoint_facts(endpoint))
    print_shown_once(endpoint, as_json, facts, secret, SHOWN_ONCE)


# -- what is printed ---------------------------------------------------------------------


def endpoint_facts(endpoint: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An endpoint as the service shows it: never a secret, only each secret's prefix."""
    counts = as_mapping(as_mapping(endpoint.get("health")).get("dispatches"))
    facts = [
        ("id", text(endpoint.get("id"))),
        ("kind", text(endpoint.get("kind"))),
        ("url", text(endpoint.get("url"))),
        ("description", text(endpoint.get("description"))),
        ("state", state_text(endpoint)),
        ("events", _filter_text(endpoint.get("event_types"))),
        ("providers", _filter_text(endpoint.get("providers"))),
        ("owners", _filter_text(endpoint.get("owners"))),
        ("unconfirmed states", yes_no(endpoint.get("include_unconfirmed"))),
        ("secrets", _secrets_text(objects(endpoint.get("secrets")))),
        ("last success", clock_text(endpoint.get("last_success_at"))),
        ("failing since", clock_text(endpoint.get("failing_since"))),
        ("dispatches", " ".join(f"{k}={number(v)}" for k, v in counts.items())),
        ("created", clock_text(endpoint.get("created_at"))),
        ("updated", clock_text(endpoint.get("updated_at"))),
    ]
    return [(name, value) for name, value in facts if value]


def state_text(endpoint: Mapping[str, Any]) -> str:
    """`enabled`, or `DISABLED` with why and since when: a disable is never silent."""
    if endpoint.get("enabled"):
        return "enabled, failing" if endpoint.get("failing_since") else "enabled"
    reason = text(endpoint.get("disabled_reason")) or "no reason recorded"
    return f"DISABLED since {clock_text(endpoint.get('disabled_at'))}: {reason}"


def _filter_text(names: Any) -> str:
    return ", ".join(text(n) for n in names) if isinstance(names, list) else "all"


def _secrets_text(entries: Iterable[Mapping[str, Any]]) -> str:
    shown = []
    for entry in entries:
        until = entry.get("expires_at")
        suffix = f" (signs until {clock_text(until)})" if until else " (current)"
        shown.append(text(entry.get("prefix")) + suffix)
    return ", ".join(shown)


def endpoints_table(endpoints: Iterable[Mapping[str, Any]]) -> Table:
    table = new_table(*ENDPOINT_COLUMNS, wrap=("url", "state"))
    for endpoint in endpoints:
        counts = as_mapping(as_mapping(endpoint.get("health")).get("dispatches"))
        table.add_row(
            text(endpoint.get("id")),
            text(endpoint.get("kind")),
            text(endpoint.get("url")),
            state_text(endpoint),
            number(counts.get("pending", 0)),
            number(counts.get("delivered", 0)),
            number(counts.get("failed", 0)),
            clock_text(endpoint.get("last_success_at")),
            clock_text(endpoint.get("failing_since")),
        )
    return table


def failures_table(failures: Iterable[Mapping[str, Any]]) -> Table:
    table = new_table(*FAILURE_COLUMNS, wrap=("error",))
    for failure in failures:
        table.add_row(
            clock_text(failure.get("at"), precise=True),
            text(failure.get("status_code")) or "-",
            text(failure.get("error")),
            text(failure.get("msg_id")),
            text(failure.get("task_ref")),
        )
    return table


def notifications_lines(summary: Any) -> list[str]:
    """The audit's notifications, in a few lines; none when the service sent none."""
    if not isinstance(summary, dict):
        return []
    oldest = summary.get("oldest_pending_seconds")
    waiting = f", the oldest waiting {duration(oldest)}" if oldest is not None else ""
    lines = [
        "",
        f"notifications: {number(summary.get('endpoints'))} endpoint(s),"
        f" {number(summary.get('pending'))} pending{waiting},"
        f" {number(summary.get('unsent'))} not fanned out yet",
    ]
    for disabled in objects(summary.get("disabled")):
        lines.append(
            f"  DISABLED {text(disabled.get('id'))} {text(disabled.get('url'))}"
            f" since {clock_text(disabled.get('disabled_at'))}: {text(disabled.get('reason'))}"
        )
    return lines
