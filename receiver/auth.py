"""Who a request is, decided in one place for the admin API and the dashboard: the bootstrap
admin token, an API key (`tlk_<id>_<secret>`, kept as its secret's SHA-256), or the
dashboard's session cookie; and what it may do (a scope, perhaps one owner's tasks only).

Key lookups are cached for `KEY_CACHE_SECONDS` in each process, so that the read paths do
not ask the database on every request: a revoked key is refused at once by the process that
revoked it, and by every other process within `KEY_CACHE_SECONDS`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from itsdangerous import BadData, TimestampSigner
from starlette.requests import Request

from receiver.errors import Forbidden, Unauthenticated
from schemas.errors import StorageUnavailable
from schemas.settings import Settings
from schemas.store import LedgerStore
from schemas.store.keys import KeyScope

log = structlog.get_logger("taskledger.receiver")

KEY_PREFIX = "tlk_"
KEY_ID_CHARS = 16  # hex: the part of a key that is listed
KEY_SECRET_CHARS = 40  # letters and digits: about 238 bits
KEY_CACHE_SECONDS = 30.0
KEY_CACHE_MAX_ENTRIES = 10_000
ADMIN_SUBJECT = "admin"  # the bootstrap admin token, as a session or a caller names it
SESSION_COOKIE = "taskledger_session"
SESSION_MAX_AGE_SECONDS = 12 * 60 * 60
SESSION_SALT = "taskledger.ui.session"
SAFE_METHODS = frozenset({"GET", "HEAD"})
_SECRET_ALPHABET = string.ascii_letters + string.digits
_HEX = frozenset(string.hexdigits.lower())


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: its scope, the one owner whose tasks it is limited to (None: every
    owner), and its key's id (None: the bootstrap admin token)."""

    scope: KeyScope
    owner: str | None = None
    key_id: str | None = None

    @property
    def subject(self) -> str:
        """Its name as a caller: its key's id, or `admin` for the bootstrap token."""
        return self.key_id or ADMIN_SUBJECT

    def sees(self, owner: str) -> bool:
        """Whether a task of `owner` is visible to it."""
        return self.owner is None or self.owner == owner


BOOTSTRAP_ADMIN = Principal(KeyScope.ADMIN)


# -- keys ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key: `token` is shown once; the ledger keeps the id and the secret's SHA-256."""

    token: str
    key_id: str
    secret_sha256: str


def issue_key() -> IssuedKey:
    key_id = secrets.token_hex(KEY_ID_CHARS // 2)
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(KEY_SECRET_CHARS))
    return IssuedKey(f"{KEY_PREFIX}{key_id}_{secret}", key_id, secret_digest(secret))


def parse_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a token shaped like a key; None for anything else."""
    key_id, sep, secret = token.removeprefix(KEY_PREFIX).partition("_")
    if not token.startswith(KEY_PREFIX) or not sep or not is_key_id(key_id):
        return None
    if len(secret) != KEY_SECRET_CHARS:
        return None
    return key_id, secret


def is_key_id(value: str) -> bool:
    return len(value) == KEY_ID_CHARS and set(value) <= _HEX


def listed_prefix(key_id: str) -> str:
    """How a key is listed: its prefix, never its secret."""
    return f"{KEY_PREFIX}{key_id}_…"


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyCache:
    """Principals of API keys, each kept `seconds` after the database said what it is (a key
    unknown, wrong or revoked too, as None); at most `max_entries`, the oldest dropped."""

    def __init__(
        self, seconds: float = KEY_CACHE_SECONDS, max_entries: int = KEY_CACHE_MAX_ENTRIES
    ) -> None:
        self._keep_for = timedelta(seconds=seconds)
        self._max_entries = max_entries
        self._entries: dict[tuple[str, str | None], tuple[Principal | None, datetime]] = {}

    async def principal(
        self, store: LedgerStore, key_id: str, secret_sha256: str | None
    ) -> Principal | None:
        """The key's principal if it exists, is not revoked and (given) its secret matches;
        `secret_sha256` None trusts the id (a signed session names it)."""
        now = store.clock()
        entry = (key_id, secret_sha256)
        cached = self._entries.get(entry)
        if cached is not None and cached[1] > now:
            return cached[0]
        found = await _look_up(store, key_id, secret_sha256)
        if len(self._entries) >= self._max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[entry] = (found, now + self._keep_for)
        return found

    def forget(self, key_id: str) -> None:
        """Drop what is kept of `key_id` (this process revoked it)."""
        for entry in [entry for entry in self._entries if entry[0] == key_id]:
            del self._entries[entry]


async def _look_up(store: LedgerStore, key_id: str, secret_sha256: str | None) -> Principal | None:
    key = await store.api_key(key_id)
    if key is None or key.revoked_at is not None:
        return None
    if secret_sha256 is not None and not hmac.compare_digest(key.secret_sha256, secret_sha256):
        return None
    try:
        await store.touch_key(key_id)
    except StorageUnavailable as exc:  # the key is good; only its last use goes unrecorded
        log.warning("api_key_touch_failed", key_id=key_id, error=type(exc).__name__)
    return Principal(KeyScope(key.scope), key.owner, key.id)


# -- requests --------------------------------------------------------------------------


def token_is_valid(settings: Settings, offered: str) -> bool:
    """True when `offered` is the admin token; an empty configured token never authenticates."""
    expected = settings.admin_token
    return bool(expected) and hmac.compare_digest(offered.encode(), expected.encode())


def bearer_is_valid(request: Request) -> bool:
    """True when the request's `Authorization: Bearer …` header carries the admin token."""
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_is_valid(
        request.app.state.settings, offered.strip()
    )


async def token_principal(request: Request, offered: str) -> Principal | None:
    """Who `offered` (a bearer token, or the sign-in form's) makes the request: the
    bootstrap admin, an API key's principal, or nobody."""
    if token_is_valid(request.app.state.settings, offered):
        return BOOTSTRAP_ADMIN
    parsed = parse_key(offered)
    if parsed is None:
        return None
    key_id, secret = parsed
    keys: KeyCache = request.app.state.keys
    return await keys.principal(request.app.state.store, key_id, secret_digest(secret))


async def authenticate(request: Request) -> Principal | None:
    """Who the request is: by its `Authorization: Bearer …` header, else (reads only) by
    its session cookie; None when neither says."""
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        found = await token_principal(request, offered.strip())
        if found is not None:
            return found
    return await session_principal(request)


async def authorize(request: Request, needed: KeyScope) -> Principal:
    """Who the request is, if its scope includes `needed`: 401 when it is nobody, 403 when
    its scope is too narrow."""
    principal = await authenticate(request)
    if principal is None:
        raise Unauthenticated("a valid bearer token is required: the admin token or an API key")
    if not principal.scope.includes(needed):
        raise Forbidden(f"this needs the {needed} scope; the key has {principal.scope}")
    return principal


# -- the dashboard's session -----------------------------------------------------------


class _ClockedSigner(TimestampSigner):
    """A `TimestampSigner` that reads the app's clock instead of `time.time()`."""

    def __init__(self, secret: str, clock: Callable[[], datetime]) -> None:
        super().__init__(secret, salt=SESSION_SALT)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock().timestamp())


def session_signer(request: Request) -> TimestampSigner | None:
    """The session signer, keyed by the admin token: a new token ends every session."""
    settings: Settings = request.app.state.settings
    if not settings.admin_token:
        return None
    return _ClockedSigner(settings.admin_token, request.app.state.inbox.clock)


def session_subject(request: Request) -> str | None:
    """Who the request's unexpired session cookie names (`admin`, or a key's id), for reads
    (GET, HEAD) only; None without a valid one.

    The cookie never authorizes a write: the dashboard only reads, so a forged cross-site
    request could gain nothing from it even where SameSite is not enforced.
    """
    offered = request.cookies.get(SESSION_COOKIE)
    signer = session_signer(request)
    if not offered or signer is None or request.method not in SAFE_METHODS:
        return None
    try:
        subject = signer.unsign(offered, max_age=SESSION_MAX_AGE_SECONDS).decode()
    except (BadData, UnicodeDecodeError):
        return None
    return subject if subject == ADMIN_SUBJECT or is_key_id(subject) else None


async def session_principal(request: Request) -> Principal | None:
    """Who the session names, if its key is still valid: a revoked key's sessions end with
    it (within `KEY_CACHE_SECONDS`)."""
    subject = session_subject(request)
    if subject is None:
        return None
    if subject == ADMIN_SUBJECT:
        return BOOTSTRAP_ADMIN
    keys: KeyCache = request.app.state.keys
    return await keys.principal(request.app.state.store, subject, None)
