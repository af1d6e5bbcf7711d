"""`taskledger keys create|list|revoke`: a running service's API keys, through its admin API.
A key is printed the one time the service shows it, on creation; after that it is listed by
its prefix only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from rich.table import Table

from ops.console.api import AdminApi, ApiError, CommandError
from ops.console.arguments import identifier, json_output
from ops.console.render import (
    clock_text,
    new_table,
    objects,
    print_json,
    print_listing,
    print_shown_once,
    text,
)
from ops.console.timeline import facts_table

SCOPES = ("read", "write", "admin")
SHOWN_ONCE = (
    "taskledger: this is the only time the service shows this key: store it now where its"
    " user keeps secrets; `taskledger keys revoke ID` ends it"
)
KEY_COLUMNS = ("id", "key", "name", "scope", "owner", "created", "last used", "revoked")
Command = Callable[[AdminApi, argparse.Namespace], int]


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
) -> None:
    """Add `keys` to the `taskledger` parser."""
    output = json_output()
    parents = [connection, output]
    group = commands.add_parser("keys", help="API keys with a scope: read, write or admin")
    sub = group.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", parents=parents, help="make a key; prints it once")
    create.add_argument("name", metavar="NAME", help="what the key is for")
    create.add_argument(
        "--scope",
        required=True,
        choices=SCOPES,
        help="read: the ledger; write: and register tasks; admin: everything",
    )
    create.add_argument("--owner", metavar="O", help="only this owner's tasks (read, write)")
    sub.add_parser("list", parents=parents, help="every key by its prefix, revoked ones too")
    revoke = sub.add_parser("revoke", parents=parents, help="end a key (within 30 s everywhere)")
    revoke.add_argument("id", type=identifier, metavar="ID", help="the key's id (keys list)")


def keys_command(api: AdminApi, args: argparse.Namespace) -> int:
    return KEY_COMMANDS[args.keys_command](api, args)


def create_command(api: AdminApi, args: argparse.Namespace) -> int:
    body = {"name": args.name, "scope": args.scope, "owner": args.owner}
    created = api.send("POST", "/v1/keys", body, needs=("id", "key"))
    key = f"key: {text(created.get('key'))}"
    print_shown_once(created, args.json, facts_table(key_facts(created)), key, SHOWN_ONCE)
    return 0


def list_command(api: AdminApi, args: argparse.Namespace) -> int:
    found = objects(api.get("/v1/keys", needs=("keys",))["keys"])
    empty = "taskledger: no key yet: make one with `taskledger keys create NAME --scope read`"
    print_listing(found, args.json, empty, lambda: keys_table(found))
    return 0


def revoke_command(api: AdminApi, args: argparse.Namespace) -> int:
    path = f"/v1/keys/{quote(args.id, safe='')}"
    try:
        revoked = api.send("DELETE", path, needs=("id", "name", "revoked_at"))
    except ApiError as exc:
        if exc.status_code == 404:
            raise CommandError(f"no key has the id {args.id}") from exc
        raise
    if args.json:
        print_json(revoked)
    else:
        print(f"taskledger: revoked key {args.id} ({text(revoked.get('name'))})")
    return 0


KEY_COMMANDS: dict[str, Command] = {
    "create": create_command,
    "list": list_command,
    "revoke": revoke_command,
}


def key_facts(key: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A key as the service lists it: by its prefix, never its secret."""
    facts = [
        ("id", text(key.get("id"))),
        ("prefix", text(key.get("prefix"))),
        ("name", text(key.get("name"))),
        ("scope", text(key.get("scope"))),
        ("owner", text(key.get("owner")) or "every owner"),
        ("created", clock_text(key.get("created_at"))),
        ("last used", clock_text(key.get("last_used_at"))),
        ("revoked", clock_text(key.get("revoked_at"))),
    ]
    return [(name, value) for name, value in facts if value]


def keys_table(keys: Iterable[Mapping[str, Any]]) -> Table:
    table = new_table(*KEY_COLUMNS, wrap=("name",))
    for key in keys:
        table.add_row(
            text(key.get("id")),
            text(key.get("prefix")),
            text(key.get("name")),
            text(key.get("scope")),
            text(key.get("owner")) or "every owner",
            clock_text(key.get("created_at")),
            clock_text(key.get("last_used_at")) or "never",
            clock_text(key.get("revoked_at")) or "-",
        )
    return table
