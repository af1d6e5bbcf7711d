"""Configuration read once from the environment (`TASKLEDGER_*`) by each entry point."""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import idna
from yarl import URL

from schemas.addresses import AddressPolicy, parse_networks
from schemas.database import checked_url, names_sqlite
from schemas.definition import Definition, load_definitions
from schemas.errors import ConfigError
from schemas.ledger import Reader
from schemas.retention import MIN_DEDUP_KEEP_DAYS, RETENTION_DAYS, RetentionPolicy
from schemas.wire import Kind, WireFormat

PREFIX = "TASKLEDGER_"
BUILTIN_PROVIDERS_DIR = Path(__file__).parent / "providers"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/taskledger.db"
DEFAULT_PROVIDERS = "openai,apidot,vidgo,evolink,aivideoapi"
DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8000"
# How far a signed webhook's timestamp may stray from our clock (Standard Webhooks: 5 min).
WEBHOOK_TOLERANCE_SECONDS = 300.0
WHSEC_PREFIX = "whsec_"
# Senders post small JSON bodies; one that trickles in is a stalled or hostile client.
BODY_TIMEOUT_SECONDS = 10.0
# Every callback and admin write is answered (stored, or 503) this long after it arrived.
ANSWER_DEADLINE_SECONDS = 5.0
SQLITE_SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
# The admin token opens the whole `/v1` API: long, and of many different characters.
ADMIN_TOKEN_MIN_CHARS = 20
ADMIN_TOKEN_MIN_DISTINCT = 10
KEYGEN_COMMAND = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
# A callback secret signs the tokens of callback URLs: one short enough to guess forges them.
CALLBACK_SECRET_MIN_CHARS = 16
# The secrets of `.env.example`, and their like: never a real secret. So is any value with
# an ellipsis in it (`whsec_...`, `sk-…`).
PLACEHOLDER_SECRETS = frozenset(
    {"change-me", "changeme", "newest-secret", "previous-secret", "secret", "password", "xxx"}
)
# The largest value a numeric setting may take, by what it counts. Beyond them a value is a
# typo, and overflows a date (now + a span), a C int or a PostgreSQL integer further on.
MAX_DAYS = 36_500.0  # a hundred years
MAX_SECONDS = MAX_DAYS * 86_400
MAX_COUNT = 1_000_000  # batch sizes, queue sizes, concurrency, redirects
MAX_MILLISECONDS = 2**31 - 1  # a C int: SQLite's busy timeout
MAX_BYTES = 1 << 50  # a pebibyte
# S3 presigns a URL for 7 days at most (`schemas.media.storage.MAX_PRESIGN_SECONDS`).
MAX_PRESIGN_SECONDS = 7 * 86_400
FLAG_WORDS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Read by the `taskledger` command's read commands (ops/console), not by a process.
CLIENT_SETTINGS = ("URL",)
DEFAULT_KIND_BY_NAME = {
    "openai": WireFormat.OPENAI,
    "apidot": WireFormat.APIDOT,
    "vidgo": WireFormat.APIDOT,
    "evolink": WireFormat.EVOLINK,
    "aivideoapi": WireFormat.AIVIDEOAPI,
}
# How long result URLs stay valid (PROVIDERS.md), from the provider's completion time.
# OpenAI's bodies carry their own `expires_at`, which wins (about 1 h); EvoLink documents
# 24 h; APIDot, Vidgo and AI Video API say nothing: 24 h too until they do.
# OpenAI shut the Sora 2 Videos API down on this day (PROVIDERS.md).
KIND_SUNSETS: dict[WireFormat, date] = {WireFormat.OPENAI: date(2026, 9, 24)}
DEFAULT_RESULT_TTL_SECONDS: dict[WireFormat, float] = {
    WireFormat.OPENAI: 3_600.0,
    WireFormat.APIDOT: 86_400.0,
    WireFormat.EVOLINK: 86_400.0,
    WireFormat.AIVIDEOAPI: 86_400.0,
}


# Where archived outputs go by default: a directory beside the embedded database.
DEFAULT_ARCHIVE_URL = "./var/media"
ARCHIVE_OFF = frozenset({"off", "none", "false", "0"})
# An S3 bucket's name, as `schemas.media.storage` opens it.
S3_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# A host a provider's outputs may come from: a name (`cdn.example.com`), one below a domain
# (`*.r2.dev`), or an address, as `schemas.addresses.host_allowed` compares them.
HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
# A provider's name is part of variable names (`TASKLEDGER_PROVIDER_<NAME>_API_KEY`), of
# callback paths (`/callbacks/<name>/...`) and of metric labels: written so, in any case.
PROVIDER_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """The archive: where outputs are copied, and the limits of fetching them."""

    url: str = DEFAULT_ARCHIVE_URL  # a directory, file://, s3://bucket/prefix, or off
    spool_dir: str = "./var/media-spool"  # downloads in progress, for an S3 archive
    max_bytes: int = 4 << 30
    # A task's outputs archived, the first in its result's order; the rest are `failed`.
    max_outputs_per_task: int = 100
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 30.0
    max_redirects: int = 5
    # Plain HTTP and private networks are refused unless allowed (tests, private CDNs).
    allow_http: bool = False
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    concurrency: int = 4
    lease_seconds: float = 300.0
    retention_days: float = 90.0
    # Serve archived files by redirecting to a presigned URL (S3 only).
    presign: bool = False
    presign_seconds: int = 300

    @property
    def enabled(self) -> bool:
        return self.url.lower() not in ARCHIVE_OFF

    @property
    def policy(self) -> AddressPolicy:
        return AddressPolicy(allow_http=self.allow_http, allowed_networks=self.allowed_networks)

    @classmethod
    def from_env(cls, env: _Env) -> ArchiveSettings:
        d = _ARCHIVE_DEFAULTS
        key = "ARCHIVE_"
        networks = env.networks(key + "ALLOW_NETWORKS")
        url = _archive_url(env, key + "URL", d.url)
        return cls(
            url=url,
            spool_dir=env.text(key + "SPOOL_DIR", d.spool_dir),
            max_bytes=env.integer(key + "MAX_BYTES", d.max_bytes, at_most=MAX_BYTES),
            max_outputs_per_task=env.integer(key + "MAX_OUTPUTS_PER_TASK", d.max_outputs_per_task),
            connect_timeout_seconds=env.number(
                key + "CONNECT_TIMEOUT_SECONDS", d.connect_timeout_seconds
            ),
            read_timeout_seconds=env.number(key + "READ_TIMEOUT_SECONDS", d.read_timeout_seconds),
            max_redirects=env.integer(key + "MAX_REDIRECTS", d.max_redirects),
            allow_http=bool(env.flag(key + "ALLOW_HTTP")),
            allowed_networks=networks,
            concurrency=env.integer(key + "CONCURRENCY", d.concurrency),
            lease_seconds=env.number(key + "LEASE_SECONDS", d.lease_seconds),
            retention_days=env.number(key + "RETENTION_DAYS", d.retention_days, at_most=MAX_DAYS),
            presign=_presign(env, key + "PRESIGN", url),
            presign_seconds=env.integer(
                key + "PRESIGN_SECONDS", d.presign_seconds, at_most=MAX_PRESIGN_SECONDS
            ),
        )


def _archive_url(env: _Env, name: str, default: str) -> str:
    """`off`, a directory, `file:///dir` or `s3://bucket[/prefix]`: checked here, so that a
    URL no store opens stops every command that reads it, before anything starts."""
    url = env.text(name, default)
    if url.lower() in ARCHIVE_OFF:
        return url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "s3" and "@" in parts.netloc:
        raise ConfigError(f"{PREFIX}{name} must not carry credentials; use AWS_* variables")
    if scheme == "s3" and (
        not S3_BUCKET_NAME.fullmatch(parts.netloc) or parts.query or parts.fragment
    ):
        raise ConfigError(f"{PREFIX}{name} must name a bucket: s3://bucket[/prefix]")
    if scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path):
        raise ConfigError(f"{PREFIX}{name} must be a file URL on this host: file:///dir")
    if scheme not in ("s3", "file", ""):
        shown = f" (got {url!r})" if "@" not in url and "?" not in url else ""
        raise ConfigError(
            f"{PREFIX}{name} must be s3://bucket[/prefix], file:///dir, a directory path"
            f" or off{shown}"
        )
    return url


def _presign(env: _Env, name: str, url: str) -> bool:
    """Presigned redirects are an S3 archive's: asked of any other, they would never be."""
    presign = bool(env.flag(name))
    if presign and url.lower() not in ARCHIVE_OFF and urlsplit(url).scheme.lower() != "s3":
        raise ConfigError(
            f"{PREFIX}{name} is for an S3 archive, and {PREFIX}ARCHIVE_URL names a local"
            " directory: unset it, or archive to s3://bucket[/prefix]"
        )
    return presign


# A notification is sent at once; each failed attempt is tried again after the next of
# these delays; after the last, it has failed: 8 attempts. Svix's schedule, with a little
# jitter.
NOTIFY_RETRY_SCHEDULE_SECONDS: tuple[float, ...] = (
    5.0,
    300.0,
    1_800.0,
    7_200.0,
    18_000.0,
    36_000.0,
    36_000.0,
)


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """The relay: how it reaches endpoints, how hard it tries, and how much it holds."""

    # Plain HTTP and private networks are refused unless allowed (tests, internal hooks).
    allow_http: bool = False
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    timeout_seconds: float = 5.0
    concurrency_per_endpoint: int = 4
    # An endpoint whose every attempt failed this long is disabled.
    disable_after_days: float = 5.0
    lease_seconds: float = 30.0
    batch_size: int = 200
    metrics_port: int | None = None
    retry_schedule_seconds: tuple[float, ...] = NOTIFY_RETRY_SCHEDULE_SECONDS

    @property
    def policy(self) -> AddressPolicy:
        return AddressPolicy(allow_http=self.allow_http, allowed_networks=self.allowed_networks)

    @classmethod
    def from_env(cls, env: _Env) -> NotifySettings:
        d = _NOTIFY_DEFAULTS
        key = "NOTIFY_"
        networks = env.networks(key + "ALLOW_NETWORKS")
        return cls(
            allow_http=bool(env.flag(key + "ALLOW_HTTP")),
            allowed_networks=networks,
            timeout_seconds=env.number(key + "TIMEOUT_SECONDS", d.timeout_seconds),
            concurrency_per_endpoint=env.integer(
                key + "CONCURRENCY_PER_ENDPOINT", d.concurrency_per_endpoint
            ),
            disable_after_days=env.number(
                key + "DISABLE_AFTER_DAYS", d.disable_after_days, at_most=MAX_DAYS
            ),
            lease_seconds=env.number(key + "LEASE_SECONDS", d.lease_seconds),
            batch_size=env.integer(key + "BATCH_SIZE", d.batch_size),
            metrics_port=env.port(key + "METRICS_PORT"),
            retry_schedule_seconds=env.delays(key + "RETRY_SCHEDULE", d.retry_schedule_seconds),
        )


# Holds about two minutes of 1,000 callbacks/s of 2 KiB each: a managed failover's length.
SPOOL_MAX_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """The receiver's local spool: where callbacks that PostgreSQL cannot take right now are
    kept, durably, until it can (`receiver.spool`); SQLite is local already."""

    enabled: bool = True
    dir: str = "./var/spool"
    max_bytes: int = SPOOL_MAX_BYTES
    # Deliveries replayed into the database per transaction once it answers again.
    drain_batch_size: int = 256

    @classmethod
    def from_env(cls, env: _Env) -> SpoolSettings:
        d = _SPOOL_DEFAULTS
        key = "SPOOL_"
        return cls(
            enabled=env.flag(key + "ENABLED") is not False,
            dir=env.text(key + "DIR", d.dir),
            max_bytes=env.integer(key + "MAX_BYTES", d.max_bytes, at_most=MAX_BYTES),
            drain_batch_size=env.integer(key + "DRAIN_BATCH_SIZE", d.drain_batch_size),
        )


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """What `python -m reconciler.relay` reads: the database, logging and `NotifySettings`;
    none of the receiver's secrets."""

    database_url: str = DEFAULT_DATABASE_URL
    sqlite_synchronous: str = "FULL"
    sqlite_busy_timeout_ms: int = 5_000
    log_level: str = "info"
    log_json: bool | None = None
    notify: NotifySettings = field(default_factory=NotifySettings)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> RelaySettings:
        return cls.from_env(_Env(environ))

    @classmethod
    def from_env(cls, env: _Env) -> RelaySettings:
        d = _DEFAULTS
        return cls(
            database_url=checked_url(env.text("DATABASE_URL", d.database_url)),
            sqlite_synchronous=env.choice(
                "SQLITE_SYNCHRONOUS", d.sqlite_synchronous, SQLITE_SYNCHRONOUS_MODES
            ),
            sqlite_busy_timeout_ms=env.integer(
                "SQLITE_BUSY_TIMEOUT_MS", d.sqlite_busy_timeout_ms, at_most=MAX_MILLISECONDS
            ),
            log_level=env.choice("LOG_LEVEL", d.log_level, LOG_LEVELS),
            log_json=env.flag("LOG_JSON"),
            notify=NotifySettings.from_env(env),
        )


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """One provider account: its wire format, endpoint, secrets and polling limits."""

    name: str
    kind: Kind
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    expected_seconds: float = 300.0
    max_age_seconds: float = 86_400.0
    rate_limit_per_second: float = 5.0
    concurrency: int = 8
    price_per_second: float | None = None
    # Lifetime of the provider's result URLs; None: its kind's default.
    result_ttl_seconds: float | None = None
    # From this day on, new tasks are refused (open ones are still received and polled).
    sunset: date | None = None
    # ed25519-jwks (fal): where the signing keys are published, and our own account's id
    # (a callback signed for another user is refused).
    jwks_url: str = ""
    webhook_user_id: str = ""
    # Whether its outputs are archived (the archive on, and not turned off for it), and
    # the hosts its result URLs may be fetched from (empty: any public host).
    archive: bool = True
    media_hosts: tuple[str, ...] = ()

    def sunset_passed(self, today: date) -> bool:
        return self.sunset is not None and today >= self.sunset

    def __post_init__(self) -> None:
        if self.result_ttl_seconds is None:
            if isinstance(self.kind, Definition):
                default = self.kind.result_ttl_seconds
            else:
                default = DEFAULT_RESULT_TTL_SECONDS.get(self.kind)
            object.__setattr__(self, "result_ttl_seconds", default)

    @property
    def reader(self) -> Reader:
        return Reader(self.kind, self.result_ttl_seconds, self.archive)

    @property
    def takes_webhooks(self) -> bool:
        """Whether its callbacks can be taken. A kind that signs them (Standard Webhooks:
        OpenAI, Replicate) needs its secrets: without them every webhook is refused, so
        none is asked for, and its tasks are learned by polling alone."""
        return not self.kind.signs_callbacks or bool(self.webhook_secrets)

    @property
    def secrets_setting(self) -> str:
        """The variable its webhook secrets are read from."""
        return f"{PREFIX}PROVIDER_{self.name.upper()}_WEBHOOK_SECRETS"


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    public_base_url: str = DEFAULT_PUBLIC_BASE_URL
    callback_secrets: tuple[str, ...] = field(default=(), repr=False)
    admin_token: str = field(default="", repr=False)
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    webhook_tolerance_seconds: float = WEBHOOK_TOLERANCE_SECONDS
    max_body_bytes: int = 1 << 20
    body_timeout_seconds: float = BODY_TIMEOUT_SECONDS
    answer_deadline_seconds: float = ANSWER_DEADLINE_SECONDS
    writer_queue_size: int = 4096
    writer_batch_size: int = 256
    # Batches committed at once; None: what the database does best (see LedgerStore).
    writer_concurrency: int | None = None
    sqlite_synchronous: str = "FULL"
    sqlite_busy_timeout_ms: int = 5_000
    log_level: str = "info"
    log_json: bool | None = None
    poll_interval_seconds: float = 1.0
    reconciler_batch_size: int = 2000
    lease_seconds: float = 60.0
    reconciler_metrics_port: int | None = None
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    # The receiver checks endpoint URLs with the relay's address policy.
    notify: NotifySettings = field(default_factory=NotifySettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        return cls.from_env(_Env(environ))

    @classmethod
    def from_env(cls, env: _Env) -> Settings:
        d = _DEFAULTS
        return cls(
            database_url=checked_url(env.text("DATABASE_URL", d.database_url)),
            public_base_url=env.url("PUBLIC_BASE_URL", d.public_base_url),
            callback_secrets=env.required_list("CALLBACK_SECRETS"),
            admin_token=env.required_text("ADMIN_TOKEN"),
            providers=_providers(env),
            webhook_tolerance_seconds=env.number(
                "WEBHOOK_TOLERANCE_SECONDS", d.webhook_tolerance_seconds
            ),
            max_body_bytes=env.integer("MAX_BODY_BYTES", d.max_body_bytes, at_most=MAX_BYTES),
            body_timeout_seconds=env.number("BODY_TIMEOUT_SECONDS", d.body_timeout_seconds),
            answer_deadline_seconds=env.number(
                "ANSWER_DEADLINE_SECONDS", d.answer_deadline_seconds
            ),
            writer_queue_size=env.integer("WRITER_QUEUE_SIZE", d.writer_queue_size),
            writer_batch_size=env.integer("WRITER_BATCH_SIZE", d.writer_batch_size),
            writer_concurrency=env.integer("WRITER_CONCURRENCY", 0) or None,
            sqlite_synchronous=env.choice(
                "SQLITE_SYNCHRONOUS", d.sqlite_synchronous, SQLITE_SYNCHRONOUS_MODES
            ),
            sqlite_busy_timeout_ms=env.integer(
                "SQLITE_BUSY_TIMEOUT_MS", d.sqlite_busy_timeout_ms, at_most=MAX_MILLISECONDS
            ),
            log_level=env.choice("LOG_LEVEL", d.log_level, LOG_LEVELS),
            log_json=env.flag("LOG_JSON"),
            poll_interval_seconds=env.number("POLL_INTERVAL_SECONDS", d.poll_interval_seconds),
            reconciler_batch_size=env.integer("RECONCILER_BATCH_SIZE", d.reconciler_batch_size),
            lease_seconds=env.number("LEASE_SECONDS", d.lease_seconds),
            reconciler_metrics_port=env.port("RECONCILER_METRICS_PORT"),
            retention=_retention(env),
            archive=ArchiveSettings.from_env(env),
            notify=NotifySettings.from_env(env),
            spool=SpoolSettings.from_env(env),
        )

    def provider(self, name: str) -> ProviderSettings | None:
        return self.providers.get(name)

    def check_secrets(self) -> None:
        """Refuse, naming the setting, a secret copied from `.env.example` (`change-me`,
        `whsec_...`), an admin token anyone could guess, an admin token or API key no HTTP
        header can carry, and a provider whose callbacks could not be verified (fal's
        without its user id). The processes and `taskledger run` call it at start-up;
        settings built for a test may hold short secrets."""
        _refuse_placeholders("CALLBACK_SECRETS", self.callback_secrets)
        _refuse_placeholders("ADMIN_TOKEN", (self.admin_token,))
        _refuse_unsendable("ADMIN_TOKEN", self.admin_token)
        for provider in self.providers.values():
            key = f"PROVIDER_{provider.name.upper()}_"
            _refuse_placeholders(key + "WEBHOOK_SECRETS", provider.webhook_secrets)
            _check_webhook_keys(key + "WEBHOOK_SECRETS", provider)
            _refuse_placeholders(key + "API_KEY", (provider.api_key,))
            _refuse_unsendable(key + "API_KEY", provider.api_key)
            check_key_set(provider)
        token = self.admin_token
        if len(token) < ADMIN_TOKEN_MIN_CHARS or len(set(token)) < ADMIN_TOKEN_MIN_DISTINCT:
            raise ConfigError(
                f"{PREFIX}ADMIN_TOKEN is too weak: use at least {ADMIN_TOKEN_MIN_CHARS}"
                f" characters, {ADMIN_TOKEN_MIN_DISTINCT} of them different"
                f" (`taskledger init-env` writes one; or `{KEYGEN_COMMAND}`)"
            )
        _check_callback_secrets(self.callback_secrets)

    @property
    def readers(self) -> dict[str, Reader]:
        """How each provider's callbacks are read, by name."""
        return {name: provider.reader for name, provider in self.providers.items()}


# Every default in one place: the dataclasses' own.
_DEFAULTS: Final = Settings()
_PROVIDER_DEFAULTS: Final = ProviderSettings(name="", kind=WireFormat.OPENAI)
_ARCHIVE_DEFAULTS: Final = ArchiveSettings()
_NOTIFY_DEFAULTS: Final = NotifySettings()
_SPOOL_DEFAULTS: Final = SpoolSettings()


def retention_policy(
    environ: Mapping[str, str], *, retention_days: float | None = None
) -> RetentionPolicy:
    """`TASKLEDGER_RETENTION_DAYS` (30) and `TASKLEDGER_DEDUP_KEEP_DAYS` (7, at least 7).

    Needs no secret, so `taskledger db prune` runs with the database URL alone;
    `retention_days` (the command's option) wins over the environment.
    """
    return _retention(_Env(environ), retention_days)


def _retention(env: _Env, retention_days: float | None = None) -> RetentionPolicy:
    days = (
        env.number("RETENTION_DAYS", RETENTION_DAYS, at_most=MAX_DAYS)
        if retention_days is None
        else retention_days
    )
    keep = env.number("DEDUP_KEEP_DAYS", MIN_DEDUP_KEEP_DAYS, at_most=MAX_DAYS)
    if keep < MIN_DEDUP_KEEP_DAYS:
        raise ConfigError(
            f"{PREFIX}DEDUP_KEEP_DAYS must be at least {MIN_DEDUP_KEEP_DAYS:g}, longer than"
            f" any provider retries a callback (got {keep:g})"
        )
    return RetentionPolicy(retention_days=days, dedup_keep_days=keep)


def archive_settings(environ: Mapping[str, str]) -> ArchiveSettings:
    """`TASKLEDGER_ARCHIVE_*` alone, without any secret (for `taskledger db prune`)."""
    return ArchiveSettings.from_env(_Env(environ))


def provider_readers(environ: Mapping[str, str]) -> dict[str, Reader]:
    """How each configured provider's callbacks are read, without asking for any secret
    (for the maintenance commands that read stored deliveries again)."""
    return {name: provider.reader for name, provider in _providers(_Env(environ)).items()}


def _providers(env: _Env) -> dict[str, ProviderSettings]:
    names = _provider_names(env, "PROVIDERS")
    kinds = _kinds(env)
    return {name: _provider(env, name, kinds) for name in names}


def _provider_names(env: _Env, name: str) -> list[str]:
    """The providers listed, lowercased: each once, and each of letters, digits and `_`
    (a name is part of variable names and of callback paths)."""
    names = [n.strip() for n in env.text(name, DEFAULT_PROVIDERS).split(",") if n.strip()]
    if not names:  # "," and the like: the reconciler would have nothing to do, and stop
        raise ConfigError(f"{PREFIX}{name} names no provider: list some, as {DEFAULT_PROVIDERS}")
    seen: set[str] = set()
    for given in names:
        if not PROVIDER_NAME.fullmatch(given):
            raise ConfigError(
                f"{PREFIX}{name}: a provider's name is letters a-z, digits and _ (got {given!r})"
            )
        if given.lower() in seen:
            raise ConfigError(f"{PREFIX}{name} lists {given.lower()} twice")
        seen.add(given.lower())
    return [given.lower() for given in names]


def _kinds(env: _Env) -> dict[str, Kind]:
    """The kinds written in code, the built-in definitions (`schemas/providers/`), and
    those defined by files in `TASKLEDGER_PROVIDERS_DIR`, which may not reuse their names."""
    kinds: dict[str, Kind] = {fmt.value: fmt for fmt in WireFormat}
    kinds.update(builtin_definitions())
    directory = env.text("PROVIDERS_DIR", "")
    if directory:
        try:
            defined = load_definitions(Path(directory))
        except ConfigError as exc:
            raise ConfigError(f"{PREFIX}PROVIDERS_DIR: {exc}") from None
        clash = sorted(set(defined) & set(kinds))
        if clash:
            raise ConfigError(
                f"{PREFIX}PROVIDERS_DIR: kind {clash[0]!r} is built in; name yours otherwise"
            )
        kinds.update(defined)
    return kinds


@functools.cache
def builtin_definitions() -> dict[str, Definition]:
    """The provider definitions shipped with taskledger (Replicate, fal.ai, kie.ai), read
    once: a mistake in one is ours, and stops start-up like any other."""
    return load_definitions(BUILTIN_PROVIDERS_DIR)


def _provider(env: _Env, name: str, kinds: Mapping[str, Kind]) -> ProviderSettings:
    key = f"PROVIDER_{name.upper()}_"
    # A provider named like a kind (openai, replicate, a definition's name) is of that kind.
    default_kind = DEFAULT_KIND_BY_NAME.get(name)
    kind_text = env.text(key + "KIND", default_kind.value if default_kind else name)
    kind = kinds.get(kind_text)
    if kind is None:
        raise ConfigError(
            f"{PREFIX}{key}KIND must be one of {', '.join(kinds)} (got {kind_text!r})",
            provider=name,
        )
    d = _defaults_of(kind)
    return ProviderSettings(
        name=name,
        kind=kind,
        base_url=env.url(key + "BASE_URL", ""),
        api_key=env.text(key + "API_KEY", ""),
        webhook_secrets=env.list(key + "WEBHOOK_SECRETS"),
        expected_seconds=env.number(key + "EXPECTED_SECONDS", d.expected_seconds),
        max_age_seconds=env.number(key + "MAX_AGE_SECONDS", d.max_age_seconds),
        rate_limit_per_second=env.number(
            key + "RATE_LIMIT", d.rate_limit_per_second, at_most=MAX_COUNT
        ),
        concurrency=env.integer(key + "CONCURRENCY", d.concurrency),
        price_per_second=env.number(key + "PRICE_PER_SECOND", 0.0) or None,
        result_ttl_seconds=env.number(key + "RESULT_TTL_SECONDS", 0.0) or None,
        sunset=_sunset(env, key + "SUNSET", kind),
        jwks_url=env.url(key + "JWKS_URL", d.jwks_url),
        webhook_user_id=env.text(key + "WEBHOOK_USER_ID", ""),
        archive=_archived(env, key + "ARCHIVE"),
        media_hosts=env.hosts(key + "MEDIA_HOSTS"),
    )


def _archived(env: _Env, name: str) -> bool:
    """A provider's outputs are archived when the archive is on, unless it says `off`."""
    wanted = env.flag(name) is not False
    return wanted and env.text("ARCHIVE_URL", DEFAULT_ARCHIVE_URL).lower() not in ARCHIVE_OFF


def _sunset(env: _Env, name: str, kind: Kind) -> date | None:
    """`none` for an endpoint that outlives its kind (Azure's OpenAI-compatible videos), a
    date, or the kind's own sunset."""
    raw = env.text(name, "").lower()
    if raw == "none":
        return None
    if not raw:
        return kind.sunset if isinstance(kind, Definition) else KIND_SUNSETS.get(kind)
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(
            f"{PREFIX}{name} must be a date like 2026-09-24, or none (got {raw!r})"
        ) from None


def _defaults_of(kind: Kind) -> ProviderSettings:
    """The defaults a provider of this kind starts from: its definition's, or ours."""
    if not isinstance(kind, Definition):
        return _PROVIDER_DEFAULTS
    return replace(
        _PROVIDER_DEFAULTS,
        kind=kind,
        expected_seconds=kind.expected_seconds,
        max_age_seconds=kind.max_age_seconds,
        rate_limit_per_second=kind.rate_limit_per_second,
        jwks_url=kind.jwks_url,
    )


def webhook_key(secret: str, raw_unprefixed: bool = False) -> bytes:
    """The HMAC key a configured secret stands for: `whsec_` and base64, or (unprefixed)
    base64 too, or the secret's own bytes when `raw_unprefixed`. `ValueError` for an
    unprefixed secret that must be base64 and is not."""
    if secret.startswith(WHSEC_PREFIX):
        try:
            key = base64.b64decode(secret.removeprefix(WHSEC_PREFIX) + "==")
        except binascii.Error:
            raise ValueError(f"a {WHSEC_PREFIX} secret must be base64 after the prefix") from None
    elif raw_unprefixed:
        key = secret.encode()
    else:
        try:
            key = base64.b64decode(secret + "=" * (-len(secret) % 4), validate=True)
        except binascii.Error:
            raise ValueError("a secret without `whsec_` must be base64") from None
    if not key:
        raise ValueError("a secret must not be empty")
    return key


def warn_webhooks_refused(log: Any, settings: Settings) -> None:
    """A warning line at start-up for each provider whose webhooks would all be refused (a
    kind that signs them, without its secrets): none is asked for, its tasks are polled."""
    for provider in settings.providers.values():
        if not provider.takes_webhooks:
            log.warning(
                "webhooks_refused",
                provider=provider.name,
                missing=provider.secrets_setting,
                learned_by="polling alone",
            )


def unprefixed_is_raw(kind: Kind) -> bool:
    """Whether a secret without `whsec_` is the key's own bytes: OpenAI's SDK takes it so."""
    return kind is WireFormat.OPENAI


def _check_webhook_keys(name: str, provider: ProviderSettings) -> None:
    """Each Standard Webhooks secret stands for a key (`webhook_key`), or the setting is
    refused: a secret decoded to another key would turn every delivery away, silently."""
    if not provider.kind.signs_callbacks:
        return
    for secret in provider.webhook_secrets:
        try:
            webhook_key(secret, raw_unprefixed=unprefixed_is_raw(provider.kind))
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}{name}: {exc} (as the provider shows it)") from None


def check_key_set(provider: ProviderSettings) -> None:
    """An `ed25519-jwks` provider (fal) needs its account's user id and a key set: checked
    with the secrets at start-up, and by the receiver's scheme (`receiver.schemes`)."""
    kind = provider.kind
    if not isinstance(kind, Definition) or kind.verify != "ed25519-jwks":
        return
    key = f"PROVIDER_{provider.name.upper()}_"
    if not provider.webhook_user_id:
        raise ConfigError(
            f"{PREFIX}{key}WEBHOOK_USER_ID is required: callbacks signed for another user"
            " are refused",
            provider=provider.name,
        )
    if not provider.jwks_url:
        raise ConfigError(
            f"{PREFIX}{key}JWKS_URL is required (the definition names no `jwks_url`)",
            provider=provider.name,
        )


def _check_callback_secrets(secrets: tuple[str, ...]) -> None:
    """Each callback secret signs the tokens of callback URLs (`schemas.tokens`): one short
    enough to guess lets anyone forge a callback for any task."""
    for secret in secrets:
        if len(secret) < CALLBACK_SECRET_MIN_CHARS:
            raise ConfigError(
                f"{PREFIX}CALLBACK_SECRETS holds a secret too short to be safe: use at least"
                f" {CALLBACK_SECRET_MIN_CHARS} characters, each secret"
                f" (`taskledger init-env` writes one; or `{KEYGEN_COMMAND}`)"
            )


def _refuse_unsendable(name: str, value: str) -> None:
    """A secret sent in an HTTP header (`Authorization: Bearer ...`) is printable ASCII: a
    control character is refused by the HTTP client at the first request, and a character
    beyond ASCII is sent as bytes the other side reads as other characters."""
    if any(not " " <= char <= "~" for char in value):
        raise ConfigError(
            f"{PREFIX}{name} must be printable ASCII, without control characters: an HTTP"
            " header carries it"
        )


def check_spool_dir(settings: Settings) -> None:
    """The receiver's spool directory, made if missing and written to, when it keeps one (on
    PostgreSQL, unless off): one it could not write would turn every callback of an outage
    away (503), the outage the spool is for. Checked like the archive's directory."""
    spool = settings.spool
    if not spool.enabled or names_sqlite(settings.database_url):
        return
    path = Path(spool.dir)
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(0, "not a directory")
        path.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=path, prefix=".taskledger-probe-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"{PREFIX}SPOOL_DIR: cannot use {path} ({exc.strerror or exc}): the receiver"
            " keeps callbacks there while PostgreSQL is down"
        ) from None


def _refuse_placeholders(name: str, values: tuple[str, ...]) -> None:
    for value in values:
        if value.lower() in PLACEHOLDER_SECRETS or "..." in value or "\u2026" in value:
            raise ConfigError(
                f"{PREFIX}{name} holds a placeholder like those of .env.example, not a"
                " secret: set a real one (`taskledger init-env` writes a new .env with them)"
            )


@dataclass(frozen=True, slots=True)
class SettingNames:
    """The names a settings class reads, recorded from its own parser: `plain` without the
    prefix (`WRITER_BATCH_SIZE`), `provider_fields` the ends of the per-provider names
    (`BASE_URL` of `TASKLEDGER_PROVIDER_<NAME>_BASE_URL`)."""

    plain: frozenset[str]
    provider_fields: frozenset[str]

    def describe(self) -> str:
        """For `--help`: every variable, then the per-provider ones."""
        lines = [f"  {PREFIX}{name}" for name in sorted(self.plain)]
        if self.provider_fields:
            fields = ", ".join(sorted(self.provider_fields))
            lines.append(f"  {PREFIX}PROVIDER_<NAME>_{{{fields}}}")
            lines.append(f"    for each NAME in {PREFIX}PROVIDERS")
        return "\n".join(lines)


@functools.cache
def setting_names(kind: type[Settings] | type[RelaySettings] = Settings) -> SettingNames:
    """What `kind.from_env` reads, found by running it on an environment that has only the
    required values and one provider, `x`: the list is the parser, never a copy of it."""
    probe = {
        PREFIX + "ADMIN_TOKEN": "x",
        PREFIX + "CALLBACK_SECRETS": "x",
        PREFIX + "PROVIDERS": "x",
        PREFIX + "PROVIDER_X_KIND": WireFormat.OPENAI.value,
    }
    env = _Env(probe)
    kind.from_env(env)
    fields = {name[len("PROVIDER_X_") :] for name in env.read if name.startswith("PROVIDER_X_")}
    plain = {name for name in env.read if not name.startswith("PROVIDER_X_")}
    return SettingNames(frozenset(plain), frozenset(fields))


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """One warning for each `TASKLEDGER_*` variable nothing reads, with the nearest valid
    name (a typo is otherwise a default silently used)."""
    names = setting_names(Settings)
    known = names.plain | set(CLIENT_SETTINGS)
    listed = {
        name.strip().upper()
        for name in _Env(environ).text("PROVIDERS", DEFAULT_PROVIDERS).split(",")
        if name.strip()
    }
    valid = sorted(
        {PREFIX + name for name in known}
        | {f"{PREFIX}PROVIDER_{p}_{f}" for p in listed for f in names.provider_fields}
    )
    return [
        _unknown(variable, listed, names.provider_fields, valid)
        for variable in sorted(environ)
        if variable.startswith(PREFIX) and variable not in valid
    ]


def _unknown(variable: str, listed: set[str], fields: frozenset[str], valid: list[str]) -> str:
    provider = _provider_of(variable, fields)
    if provider is not None and provider not in listed:
        return (
            f"{variable} is ignored: {provider.lower()} is not in {PREFIX}PROVIDERS"
            f" ({', '.join(sorted(p.lower() for p in listed)) or 'empty'})"
        )
    nearest = _nearest(variable, valid)
    hint = f"; did you mean {nearest}?" if nearest else " (ignored)"
    return f"{variable} is not a setting{hint}"


def _nearest(variable: str, names: Iterable[str]) -> str | None:
    """The name most like `variable`, compared without the prefix they share."""
    bare = {name.removeprefix(PREFIX): name for name in names}
    found = difflib.get_close_matches(variable.removeprefix(PREFIX), bare, n=1, cutoff=0.8)
    return bare[found[0]] if found else None


def _provider_of(variable: str, fields: frozenset[str]) -> str | None:
    """`OPENAI` of `TASKLEDGER_PROVIDER_OPENAI_API_KEY`, if the name ends with a field."""
    head = PREFIX + "PROVIDER_"
    if not variable.startswith(head):
        return None
    for field_name in sorted(fields, key=len, reverse=True):
        if variable.endswith("_" + field_name) and len(variable) > len(head + field_name) + 1:
            return variable[len(head) : -len(field_name) - 1]
    return None


class _Env:
    """Typed reads of `TASKLEDGER_*` variables with errors that name the variable; `read`
    keeps the name of every variable asked for (see `setting_names`)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.read: set[str] = set()

    def text(self, name: str, default: str) -> str:
        self.read.add(name)
        value = self._environ.get(PREFIX + name, "").strip()
        return value or default

    def required_text(self, name: str) -> str:
        value = self.text(name, "")
        if not value:
            raise ConfigError(f"{PREFIX}{name} is required and not set{self._typo_of(name)}")
        return value

    def _typo_of(self, name: str) -> str:
        """` (TASKLEDGER_ADMIN_TOKN is set: a typo?)` when a near name is set."""
        given = [key for key in self._environ if key.startswith(PREFIX) and key != PREFIX + name]
        nearest = _nearest(PREFIX + name, given)
        return f" ({nearest} is set: a typo?)" if nearest else ""

    def list(self, name: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.text(name, "").split(",") if item.strip())

    def hosts(self, name: str) -> tuple[str, ...]:
        """Comma-separated host patterns (`cdn.example.com,*.r2.dev`), never URLs."""
        values = self.list(name)
        for value in values:
            if not _is_host_pattern(value):
                shown = f" (got {value!r})" if "@" not in value and "?" not in value else ""
                raise ConfigError(
                    f"{PREFIX}{name} must be host names like cdn.example.com or *.r2.dev,"
                    f" comma-separated, not URLs{shown}"
                )
        return values

    def required_list(self, name: str) -> tuple[str, ...]:
        values = self.list(name)
        if not values:
            raise ConfigError(
                f"{PREFIX}{name} is required and not set (comma-separated, newest first)"
                + self._typo_of(name)
            )
        return values

    def number(self, name: str, default: float, *, at_most: float = MAX_SECONDS) -> float:
        """A finite positive number up to `at_most` (seconds unless the setting says else)."""
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name} must be a number (got {raw!r})") from None
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{PREFIX}{name} must be a finite positive number (got {raw!r})")
        if value > at_most:
            limit = _limit(at_most, name)
            raise ConfigError(f"{PREFIX}{name} must be at most {limit} (got {raw!r})")
        return value

    def integer(self, name: str, default: int, *, at_most: int = MAX_COUNT) -> int:
        """A whole number from 1 to `at_most`: a size, a count, milliseconds (`1e6` is one)."""
        value = self.number(name, default, at_most=at_most)
        if value != int(value):
            raw = self.text(name, "")
            raise ConfigError(f"{PREFIX}{name} must be a whole number (got {raw!r})")
        return int(value)

    def url(self, name: str, default: str) -> str:
        """An absolute http(s) URL with a host and without query or fragment, as the base
        of others; without its trailing `/`. Empty when unset and `default` is."""
        value = self.text(name, default)
        if value and (fault := _url_fault(value)):
            raise ConfigError(f"{PREFIX}{name} {fault}")
        return value.rstrip("/")

    def delays(self, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        """Comma-separated seconds, each zero or more (`0,0.2,0.5,1`)."""
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            values = tuple(float(item) for item in raw.split(","))
        except ValueError:
            raise ConfigError(
                f"{PREFIX}{name} must be seconds like 0,5,300 (got {raw!r})"
            ) from None
        if any(not 0 <= value < float("inf") for value in values):
            raise ConfigError(f"{PREFIX}{name} must be seconds, none negative (got {raw!r})")
        if any(value > MAX_SECONDS for value in values):
            limit = _limit(MAX_SECONDS, name)
            raise ConfigError(f"{PREFIX}{name} must be seconds, each at most {limit} (got {raw!r})")
        return values

    def networks(self, name: str) -> tuple[IPv4Network | IPv6Network, ...]:
        """Comma-separated networks or addresses (`10.0.0.0/8,127.0.0.1`)."""
        try:
            return parse_networks(self.text(name, ""))
        except ConfigError as exc:
            raise ConfigError(f"{PREFIX}{name}: {exc}") from None

    def port(self, name: str) -> int | None:
        raw = self.text(name, "")
        if not raw:
            return None
        if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 65536:
            raise ConfigError(f"{PREFIX}{name} must be a TCP port number (got {raw!r})")
        return int(raw)

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        """One of `allowed`, in any case; returned as `allowed` spells it."""
        value = self.text(name, default)
        by_case = {option.lower(): option for option in allowed}
        if value.lower() not in by_case:
            raise ConfigError(f"{PREFIX}{name} must be one of {', '.join(allowed)} (got {value!r})")
        return by_case[value.lower()]

    def flag(self, name: str) -> bool | None:
        """On or off (`true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`, any case); None unset."""
        raw = self.text(name, "")
        if not raw:
            return None
        if raw.lower() not in FLAG_WORDS:
            raise ConfigError(
                f"{PREFIX}{name} must be true or false (or yes/no, on/off, 1/0; got {raw!r})"
            )
        return FLAG_WORDS[raw.lower()]


def _is_host_pattern(value: str) -> bool:
    try:
        ip_address(value)
    except ValueError:
        return HOST_PATTERN.fullmatch(value.lower()) is not None
    return True


BINARY_UNITS = (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20))


def _limit(at_most: float, name: str) -> str:
    """A bound as people read it: `1 PiB, 1125899906842624 bytes`, `36500`, `0.5`."""
    if at_most != int(at_most):
        return f"{at_most:g}"
    whole = int(at_most)
    if name.endswith("BYTES"):
        for unit, size in BINARY_UNITS:
            if whole >= size and whole % size == 0:
                return f"{whole // size} {unit}, {whole} bytes"
    return str(whole)


def _host_sendable(host: str) -> bool:
    """Whether the HTTP clients (httpx, aiohttp) can send a request to `host`: each encodes
    a name to ASCII (IDNA) as it parses the URL, and the resolver encodes that again with
    Python's `idna` codec, which refuses an empty label (`a..b`) or one over 63 characters."""
    try:
        ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        by_aiohttp = URL(f"http://{host}/").raw_host or ""
        by_aiohttp.encode("idna")
        # httpx encodes a name that is not ASCII by IDNA 2008, which refuses symbols (`☃`).
        by_httpx = host if host.isascii() else idna.encode(host.lower()).decode("ascii")
        by_httpx.encode("idna")
    except (idna.IDNAError, ValueError):  # UnicodeError is a ValueError
        return False
    return bool(by_httpx and by_aiohttp)


def _url_fault(url: str) -> str | None:
    """What keeps `url` from being a base URL; None when nothing does. The URL is shown only
    when it cannot hold a credential (no user part, no query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname  # a bracketed host that is no address ("[zz]") fails here
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # "http://[::1" too
        parts, host, port_ok = urlsplit(""), None, False
    if parts.scheme.lower() not in {"http", "https"} or not host or not port_ok:
        shown = f" (got {url!r})" if "@" not in url and "?" not in url else ""
        return f"must be an absolute http(s) URL with a host, like https://example.com{shown}"
    if "@" in parts.netloc:
        return "must be a URL without a user or password (credentials have settings of their own)"
    if any(char.isspace() for char in url):
        return "must be a URL without spaces"
    if not _host_sendable(host):
        return f"must name a host an HTTP client can reach (got {host!r})"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must be a URL without a query (?...) or a fragment (#...)"
    return None


# prometheus_client's variable: where the receiver's workers write their metrics.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def given_multiprocess_dir(environ: Mapping[str, str]) -> str | None:
    """`PROMETHEUS_MULTIPROC_DIR` when set: a directory, or a `ConfigError` in one line."""
    path = environ.get(MULTIPROCESS_DIR_VARIABLE, "").strip()
    if path and not Path(path).is_dir():
        raise ConfigError(f"{MULTIPROCESS_DIR_VARIABLE}: {path} is not a directory")
    return path or None
