"""Endpoint URLs: which kind of sink a URL names, the broker targets they describe (a NATS
JetStream subject, a RabbitMQ exchange), and their redacted form for logs and answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit, urlunsplit

from schemas.addresses import HOST_SHOWN_CHARS, ODD_HOST, odd_numeric_host
from schemas.errors import LedgerError

Kind = Literal["http", "nats", "amqp"]
KINDS: dict[str, Kind] = {
    "http": "http",
    "https": "http",
    "nats": "nats",
    "amqp": "amqp",
    "amqps": "amqp",
}
DEFAULT_PORTS = {"nats": 4222, "amqp": 5672, "amqps": 5671}
# AMQP 0-9-1 short strings: exchange names and routing keys.
AMQP_NAME_MAX_BYTES = 255
AMQP_PARAMETERS = ("exchange", "routing_key")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EndpointUrlError(LedgerError, ValueError):
    """An endpoint URL that names no usable sink; the message says why, without secrets."""


@dataclass(frozen=True, slots=True)
class NatsTarget:
    """A JetStream subject on a NATS server; a `username` without a password is a token."""

    host: str
    port: int
    subject: str
    username: str | None = None
    password: str | None = None

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AmqpTarget:
    """An exchange in a RabbitMQ virtual host; `routing_key` None: the event's type."""

    host: str
    port: int
    vhost: str
    exchange: str
    routing_key: str | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def routing_key_for(self, event_type: str) -> str:
        return event_type if self.routing_key is None else self.routing_key


BrokerTarget = NatsTarget | AmqpTarget


def kind_of(url: str) -> Kind:
    """The kind of sink a URL names, by its scheme: `http` (http, https), `nats`, `amqp`
    (amqp, amqps); refused when its host is an address in another form than a.b.c.d
    (`check_host`)."""
    parts = _split(url)
    if parts.scheme not in KINDS:
        named = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise EndpointUrlError(
            f"an endpoint URL has {named}; expected https, http, nats, amqp or amqps"
        )
    check_host(parts.hostname or "")
    return KINDS[parts.scheme]


def check_host(host: str) -> None:
    """Raise if `host` ends in a number but is not an IPv4 address written a.b.c.d
    (`schemas.addresses.odd_numeric_host`): such a URL is never delivered, or is checked as
    one address and reaches another."""
    if odd_numeric_host(host):
        raise EndpointUrlError(
            f"an endpoint URL's host {host[:HOST_SHOWN_CHARS]!r} {ODD_HOST}"
            " (four decimal numbers, no leading zero): other forms"
            " are read as different addresses by different parsers, a way past address checks"
        )


def parse_broker_url(url: str) -> BrokerTarget:
    """The broker target of a `nats://` or `amqp(s)://` endpoint URL."""
    kind = kind_of(url)
    if kind == "nats":
        return parse_nats_url(url)
    if kind == "amqp":
        return parse_amqp_url(url)
    raise EndpointUrlError("an http(s) URL names a webhook, not a broker")


def parse_nats_url(url: str) -> NatsTarget:
    """`nats://[user:password@]host[:port]/<subject>`; the port defaults to 4222."""
    parts = _split(url)
    if parts.scheme != "nats":
        raise EndpointUrlError("a NATS endpoint URL starts with nats://")
    if parts.query or parts.fragment:
        raise EndpointUrlError("a nats URL takes no query or fragment, only a subject as its path")
    subject = unquote(parts.path.removeprefix("/"))
    check_subject(subject)
    host, port = _address(parts)
    username, password = _credentials(parts)
    return NatsTarget(host, port, subject, username, password)


def parse_amqp_url(url: str) -> AmqpTarget:
    """`amqp[s]://[user:password@]host[:port]/<vhost>?exchange=<name>[&routing_key=<key>]`;
    the port defaults to 5672 (5671 for amqps), an empty vhost is `/` (written `%2F`)."""
    parts = _split(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise EndpointUrlError("a RabbitMQ endpoint URL starts with amqp:// or amqps://")
    if parts.fragment:
        raise EndpointUrlError("an amqp URL takes no fragment")
    exchange, routing_key = _amqp_parameters(parts.query)
    host, port = _address(parts)
    username, password = _credentials(parts)
    return AmqpTarget(
        host,
        port,
        _vhost(parts.path),
        exchange,
        routing_key,
        username,
        password,
        tls=parts.scheme == "amqps",
    )


def check_subject(subject: str) -> None:
    """Raise unless `subject` is a NATS subject one may publish to: dot-separated tokens,
    none empty, no whitespace, no wildcards."""
    if not subject:
        raise EndpointUrlError(
            "a nats URL needs a subject as its path, as in nats://host:4222/taskledger.events"
        )
    if any(char.isspace() for char in subject) or _CONTROL.search(subject):
        raise EndpointUrlError("a NATS subject may not contain whitespace or control characters")
    if "*" in subject or ">" in subject:
        raise EndpointUrlError("a NATS subject to publish to may not contain the wildcards * or >")
    if "" in subject.split("."):
        raise EndpointUrlError(
            f"the NATS subject {subject!r} has an empty token (a leading, trailing or double dot)"
        )


def redact(url: str) -> str:
    """`url` without its credentials (user and password), for logs and API answers."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unreadable URL>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _split(url: str) -> SplitResult:
    if _CONTROL.search(url) or " " in url:
        raise EndpointUrlError("an endpoint URL may not contain spaces or control characters")
    try:
        return urlsplit(url.strip())
    except ValueError as exc:
        raise EndpointUrlError(f"an endpoint URL does not parse: {exc}") from exc


def _address(parts: SplitResult) -> tuple[str, int]:
    try:
        port = parts.port
    except ValueError as exc:
        raise EndpointUrlError(f"a {parts.scheme} URL has an invalid port") from exc
    if port == 0:
        raise EndpointUrlError(f"a {parts.scheme} URL's port must be from 1 to 65535")
    if not parts.hostname:
        raise EndpointUrlError(f"a {parts.scheme} URL needs a host")
    return parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _credentials(parts: SplitResult) -> tuple[str | None, str | None]:
    username, password = parts.username, parts.password
    return (
        None if username is None else unquote(username),
        None if password is None else unquote(password),
    )


def _vhost(path: str) -> str:
    raw = path.removeprefix("/")
    if "/" in raw:
        raise EndpointUrlError("an amqp URL's path is one vhost; a / inside it is written %2F")
    return unquote(raw) or "/"


def _amqp_parameters(query: str) -> tuple[str, str | None]:
    """The exchange (required) and routing key (optional) of an amqp URL's query."""
    try:
        found = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise EndpointUrlError("an amqp URL's query does not parse") from exc
    unknown = sorted(set(found) - set(AMQP_PARAMETERS))
    if unknown:
        raise EndpointUrlError(
            f"an amqp URL takes only exchange= and routing_key=, not {', '.join(unknown)}"
        )
    repeated = sorted(name for name, values in found.items() if len(values) > 1)
    if repeated:
        raise EndpointUrlError(f"an amqp URL names {', '.join(repeated)} more than once")
    exchange = found.get("exchange", [""])[0]
    if not exchange:
        raise EndpointUrlError("an amqp URL needs ?exchange=<name>")
    _check_amqp_name("exchange", exchange)
    routing_key = found.get("routing_key", [None])[0]
    if routing_key is not None:
        _check_amqp_name("routing_key", routing_key)
    return exchange, routing_key


def _check_amqp_name(name: str, value: str) -> None:
    if len(value.encode()) > AMQP_NAME_MAX_BYTES:
        raise EndpointUrlError(f"an amqp URL's {name} is longer than {AMQP_NAME_MAX_BYTES} bytes")
    if _CONTROL.search(value):
        raise EndpointUrlError(f"an amqp URL's {name} may not contain control characters")
