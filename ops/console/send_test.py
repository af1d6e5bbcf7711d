"""`taskledger send-test PROVIDER REF STATUS`, like `stripe trigger`: the callback a provider
sends when a task reaches a state, in its wire format and signed (or tokened) as it signs,
posted to a running service. The bodies are `schemas.wire.examples`'.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from standardwebhooks import Webhook

from ops.console.api import TIMEOUT_SECONDS, AdminApi, ApiError, CommandError
from ops.console.arguments import identifier
from ops.console.render import text, yes_no
from ops.console.timeline import TASK_FIELDS
from ops.envfile import load_environ
from schemas.clock import utc_now
from schemas.settings import (
    PREFIX,
    builtin_definitions,
    provider_readers,
    unprefixed_is_raw,
    webhook_key,
)
from schemas.states import State
from schemas.wire import Kind
from schemas.wire.examples import NoExample, callback_body
from schemas.wire.formats import scheme_of

STATES = tuple(s.value for s in State if s not in (State.SUBMITTED, State.LOST))
USER_AGENT = "taskledger-send-test"
HELP = f"""\
Send the callback PROVIDER sends when task REF reaches STATUS to the running service, as
the provider sends it: its wire format (the README's "Callback bodies"), to the task's
callback URL, and signed as the provider signs:

  openai, replicate   Standard Webhooks, with {PREFIX}PROVIDER_<NAME>_WEBHOOK_SECRETS
  kie                 its HMAC of task id and time, when {PREFIX}PROVIDER_KIE_WEBHOOK_SECRETS
                      is set (else the URL token alone, as with signing off at kie)
  apidot, vidgo, evolink, aivideoapi
                      the URL token alone: unsigned, as the gateways send them
  fal                 refused: fal signs with its own Ed25519 key, which taskledger
                      does not hold (--dry-run still prints the body)

Secrets come from the environment, else .env. The callback names the task's provider task
id (--task-id another). An unsigned callback is a hint: the reconciler then polls the
provider to confirm it, and a task id the provider does not know ends in a poll error.
"""


@dataclass(frozen=True, slots=True)
class Callback:
    """One callback ready to send: where, what, and how it is authenticated."""

    url: str
    body: bytes
    headers: dict[str, str]
    how: str


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
) -> None:
    """Add `send-test` to the `taskledger` parser."""
    parser = commands.add_parser(
        "send-test",
        parents=[connection],
        help="send a provider's callback for a task, signed as the provider signs it",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("provider", metavar="PROVIDER", help="the task's provider (apidot, …)")
    parser.add_argument("ref", metavar="REF", type=identifier, help="the task's ref (tl_…)")
    parser.add_argument("status", metavar="STATUS", choices=STATES, help=", ".join(STATES))
    parser.add_argument("--task-id", help="the provider task id to name (default: the task's)")
    parser.add_argument("--dry-run", action="store_true", help="print the request, send nothing")


def send_test_command(api: AdminApi, args: argparse.Namespace) -> int:
    task = _task(api, args.ref)
    callback = prepare(task, args, load_environ(), utc_now())
    if args.dry_run:
        print(f"POST {shown_url(callback.url)}")
        print("\n".join(f"{name}: {value}" for name, value in callback.headers.items()))
        print()
        print(json.dumps(json.loads(callback.body), indent=2, ensure_ascii=False))
        return 0
    response = _post(api, callback)
    print(
        f"taskledger: sent {args.provider}'s {args.status} callback for {args.ref} to"
        f" {shown_url(callback.url)}, {callback.how}"
    )
    print(f"  answer  {response.status_code} {text(response.text.strip())[:200]}")
    if not response.is_success:
        raise CommandError(f"the service refused the callback ({response.status_code})")
    after = _task(api, args.ref)
    confirmed = after.get("confirmed")
    hint = "" if confirmed else " (a hint until the reconciler's poll of the provider agrees)"
    print(f"  task    {text(after.get('state'))}, confirmed: {yes_no(confirmed)}{hint}")
    return 0


def prepare(
    task: Mapping[str, Any], args: argparse.Namespace, environ: Mapping[str, str], now: datetime
) -> Callback:
    """The callback for `task` saying `args.status`, signed with `environ`'s secrets."""
    name = args.provider
    if task.get("provider") != name:
        raise CommandError(f"task {args.ref} is {text(task.get('provider'))}'s, not {name}'s")
    task_id = args.task_id or task.get("provider_task_id")
    if not isinstance(task_id, str) or not task_id:
        raise CommandError(
            f"task {args.ref} has no provider task id yet: pass --task-id (a token callback"
            " gives the task its id) or attach one with PATCH /v1/tasks/{ref}"
        )
    url = task.get("callback_url")
    if not isinstance(url, str) or not url:
        raise CommandError(f"the service gives task {args.ref} no callback URL")
    if not _sendable(url):
        raise CommandError(
            f"the service gives task {args.ref} a callback URL that is no http(s) URL:"
            f" check its {PREFIX}PUBLIC_BASE_URL"
        )
    kind = kind_of(name, environ)
    try:
        body = callback_body(kind, task_id, State(args.status), now)
    except NoExample as exc:
        raise CommandError(str(exc)) from exc
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return _signed(kind, name, url, raw, task_id, environ, now, dry_run=args.dry_run)


def kind_of(name: str, environ: Mapping[str, str]) -> Kind:
    """A provider's wire format as this service's settings say (a built-in one by name)."""
    readers = provider_readers(environ)
    if name in readers:
        return readers[name].kind
    builtin = builtin_definitions().get(name)
    if builtin is not None:
        return builtin
    raise CommandError(
        f"provider {name!r} is not in {PREFIX}PROVIDERS here: its wire format is unknown"
        f" (set {PREFIX}PROVIDERS and {PREFIX}PROVIDER_{name.upper()}_KIND as the service does)"
    )


def _signed(
    kind: Kind,
    name: str,
    url: str,
    body: bytes,
    task_id: str,
    environ: Mapping[str, str],
    now: datetime,
    *,
    dry_run: bool,
) -> Callback:
    headers = {"content-type": "application/json", "user-agent": USER_AGENT}
    scheme = scheme_of(kind)
    keys = _secrets(environ, name)
    if scheme == "ed25519-jwks":
        if dry_run:
            return Callback(url, body, headers, "unsigned: fal signs it with its own key")
        raise CommandError(
            f"cannot send a {name} callback: {name} signs its callbacks with its own Ed25519"
            " key (checked against its published key set), which taskledger does not hold,"
            " and the service accepts none without that signature. Nothing was sent;"
            " --dry-run prints the body it would carry"
        )
    if scheme == "standard-webhooks":
        if not keys:
            raise CommandError(
                f"{_secret_name(name)} is not set here: send-test signs {name}'s callbacks"
                f" with it, as {name} does"
            )
        signed = standard_webhooks_headers(keys[0], body, now, _secret_name(name), kind)
        return Callback(url, body, headers | signed, "signed (Standard Webhooks)")
    if scheme == "hmac-fields" and keys:
        signed = hmac_fields_headers(keys[0], task_id, now)
        return Callback(url, body, headers | signed, f"with the URL token and {name}'s HMAC")
    return Callback(url, body, headers, "with the URL token alone (unsigned)")


def standard_webhooks_headers(
    secret: str, body: bytes, now: datetime, setting: str, kind: Kind
) -> dict[str, str]:
    """`webhook-id`, `-timestamp` and `-signature`, as a Standard Webhooks sender sends,
    with the key the receiver reads the secret as (an unprefixed OpenAI secret is its own
    bytes, as OpenAI's SDK takes it)."""
    msg_id = f"msg_{secrets.token_hex(12)}"
    try:
        key = webhook_key(secret, raw_unprefixed=unprefixed_is_raw(kind))
    except ValueError as exc:
        raise CommandError(f"{setting} is not a Standard Webhooks secret: {exc}") from exc
    signature = Webhook(key).sign(msg_id=msg_id, timestamp=now, data=body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


def hmac_fields_headers(key: str, task_id: str, now: datetime) -> dict[str, str]:
    """kie's: base64(HMAC-SHA256(key, taskId + "." + timestamp)) and the timestamp."""
    stamp = str(int(now.timestamp()))
    digest = hmac.new(key.encode(), f"{task_id}.{stamp}".encode(), hashlib.sha256).digest()
    return {
        "x-webhook-timestamp": stamp,
        "x-webhook-signature": base64.b64encode(digest).decode(),
    }


def _secret_name(name: str) -> str:
    return f"{PREFIX}PROVIDER_{name.upper()}_WEBHOOK_SECRETS"


def _secrets(environ: Mapping[str, str], name: str) -> list[str]:
    raw = environ.get(_secret_name(name), "")
    return [item.strip() for item in raw.split(",") if item.strip()]


def _task(api: AdminApi, ref: str) -> dict[str, Any]:
    try:
        return api.get(f"/v1/tasks/{quote(ref, safe='')}", needs=TASK_FIELDS)
    except ApiError as exc:
        if exc.status_code == 404:
            raise CommandError(f"no task has the ref {ref}") from exc
        raise


def _post(api: AdminApi, callback: Callback) -> httpx.Response:
    """POST the callback; the admin token stays with the admin API, never sent along."""
    request = api.http.build_request(
        "POST", callback.url, content=callback.body, headers=callback.headers
    )
    request.headers.pop("authorization", None)
    request.extensions["timeout"] = httpx.Timeout(TIMEOUT_SECONDS).as_dict()
    try:
        return api.http.send(request)
    except httpx.HTTPError as exc:
        raise CommandError(
            f"cannot deliver the callback to {shown_url(callback.url)} (the task's callback"
            f" URL, from the service's {PREFIX}PUBLIC_BASE_URL): {type(exc).__name__}"
        ) from exc


def _sendable(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def shown_url(url: str) -> str:
    """A callback URL fit to print: its token (a credential for the task) left out."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    if len(segments) == 4 and segments[1] == "callbacks":
        segments[3] = "<token>"
    return urlunsplit(parts._replace(path="/".join(segments)))
