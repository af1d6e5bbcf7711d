"""Reading provider JSON: `Fields` (typed reads that name the failing field) and the number,
time and text parsing every wire format shares."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from schemas import clock
from schemas.errors import WireFormatError
from schemas.json_text import NUL_READ_AS
from schemas.states import State
from schemas.tables import TASK_ID_MAX_CHARS
from schemas.wire.formats import WireFormat
from schemas.wire.observation import Lifetime

ID_MAX_CHARS = TASK_ID_MAX_CHARS  # an id must fit the ledger's column
CODE_MAX_CHARS = 100
MESSAGE_MAX_CHARS = 1000
URL_MAX_CHARS = 4096
_NUMBER_TEXT_MAX_CHARS = 32
_TIME_TEXT_MAX_CHARS = 64
_SAFE_INT_MAX = 10**18
# Unix seconds stay below 1e11 until the year 5138: anything larger is milliseconds.
_MILLISECONDS_ABOVE = 10**11
_ENVELOPE_OK = 200


@dataclass(frozen=True, slots=True)
class Fields:
    """Typed reads from one JSON object; every mismatch is a WireFormatError naming the field."""

    fmt: WireFormat
    body: Mapping[str, object]
    path: str = ""

    @classmethod
    def of(cls, fmt: WireFormat, body: object) -> Fields:
        if not isinstance(body, dict):
            raise WireFormatError(
                f"{fmt} body must be a JSON object, not {kind(body)}", reason="not_object"
            )
        return cls(fmt, body)

    def fail(self, key: str, problem: str, reason: str = "bad_field") -> WireFormatError:
        return WireFormatError(
            f"{self.fmt} body: field '{self.path}{key}' {problem}", reason=reason
        )

    def get(self, key: str) -> object:
        return self.body.get(key)

    def sub(self, key: str) -> Fields:
        value = self.body.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, f"must be an object, not {kind(value)}")
        return Fields(self.fmt, value, f"{self.path}{key}.")

    def text(self, key: str, max_chars: int = ID_MAX_CHARS) -> str:
        value = self.body.get(key)
        if isinstance(value, str):  # the common case first, without a call (`text_problem`)
            text = value.strip()
            if text and len(text) <= max_chars and NUL_READ_AS not in text:
                return text
        raise self.fail(key, text_problem(value, max_chars) or "is not text")

    def text_of(self, *keys: str) -> str:
        """The first of `keys` the body gives, read as `text`: one field, several spellings."""
        given = next((key for key in keys if self.body.get(key) is not None), keys[0])
        return self.text(given)

    def state(self, key: str, table: Mapping[str, State], missing: State | None) -> State:
        value = self.body.get(key)
        if value is None and missing is not None:
            return missing
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {kind(value)}", "unknown_status")
        state = table.get(value.strip().lower())
        if state is None:
            raise self.fail(key, f"has unknown value {value[:50]!r}", "unknown_status")
        return state

    def progress(self, key: str) -> int | None:
        """A percentage clamped to 0..100, rounded down; absent is None."""
        value = self.body.get(key)
        if value is None:
            return None
        found = number(value)
        if found is None:
            raise self.fail(key, f"must be a finite number, not {kind(value)}")
        return min(100, max(0, math.floor(found)))

    def time(self, key: str) -> datetime | None:
        """Informational: an unreadable time is None, never an error."""
        return moment(self.body.get(key))

    def first_time(self, keys: tuple[str, ...]) -> datetime | None:
        """The first readable time among `keys` (informational: None if there is none)."""
        for key in keys:
            found = self.time(key)
            if found is not None:
                return found
        return None

    def amount(self, key: str) -> int | float | None:
        """Informational: a JSON number (finite, JSON-safe), else None, never an error."""
        return amount(self.body.get(key))

    def message(self, key: str, max_chars: int = MESSAGE_MAX_CHARS) -> str | None:
        return short_text(self.body.get(key), max_chars)

    def error(self, key: str) -> tuple[str | None, str | None]:
        """An error given as `{"code", "message"}` or as a bare message string."""
        value = self.body.get(key)
        if value is None or isinstance(value, str):
            return None, short_text(value, MESSAGE_MAX_CHARS)
        if not isinstance(value, dict):
            raise self.fail(key, f"must be an object or a string, not {kind(value)}")
        found = Fields(self.fmt, value)
        return found.message("code", CODE_MAX_CHARS), found.message("message")

    def urls(self, key: str, url_key: str) -> tuple[str, ...]:
        """A list of URL strings or of objects carrying the URL under `url_key`."""
        value = self.body.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array, not {kind(value)}")
        return tuple(self._url(f"{key}[{n}]", item, url_key) for n, item in enumerate(value))

    def _url(self, key: str, item: object, url_key: str) -> str:
        if isinstance(item, dict):
            return Fields(self.fmt, item, f"{self.path}{key}.").text(url_key, URL_MAX_CHARS)
        if isinstance(item, str) and 0 < len(item.strip()) <= URL_MAX_CHARS:
            return item.strip()
        raise self.fail(key, f"must be a URL or an object with '{url_key}', not {kind(item)}")


def checked_envelope(answer: Fields) -> Fields:
    """An answer whose `code`, when given, is 200; any other code is the provider's refusal."""
    code = answer.get("code")
    if code is not None and number(code) != _ENVELOPE_OK:
        said = answer.message("message") or answer.message("msg") or "no message"
        shown = short_text(code, CODE_MAX_CHARS) or kind(code)
        raise answer.fail("code", f"is {shown}, not 200: {said}", "provider_error")
    return answer


def url_expiry(
    urls: tuple[str, ...], finished: datetime | None, lifetime: Lifetime
) -> dict[str, object]:
    """`expires_at` of a task's result URLs, when it has some and their lifetime is known."""
    expires_at = lifetime.expiry(finished) if urls else None
    return {} if expires_at is None else {"expires_at": iso(expires_at)}


iso = clock.utc_iso


def without(request: Mapping[str, object], *keys: str) -> dict[str, object]:
    return {key: value for key, value in request.items() if key not in keys}


def text_problem(value: object, max_chars: int) -> str | None:
    """Why `value` is no id (or URL) a body can give, or None: it must be a string, not
    blank, of at most `max_chars` characters, and hold no NUL (read as U+FFFD: kept so,
    it would be another id than the provider's)."""
    if not isinstance(value, str):
        return f"must be a non-empty string, not {kind(value)}"
    text = value.strip()
    if not text:
        return "must not be empty or blank"
    if len(text) > max_chars:
        return f"is longer than {max_chars} characters"
    if NUL_READ_AS in text:
        return "holds NUL"
    return None


def kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    for type_, name in ((str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, type_):
            return name
    return type(value).__name__


def amount(value: object) -> int | float | None:
    """A JSON number (finite, JSON-safe, not text), else None: an amount is informational."""
    if isinstance(value, str) or (isinstance(value, int) and abs(value) >= _SAFE_INT_MAX):
        return None
    return number(value)


def number(value: object) -> int | float | None:
    """A finite number from a JSON number or numeric string ("50", "50.5", "50%")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= _NUMBER_TEXT_MAX_CHARS:
        return _number_in(value.strip().removesuffix("%"))
    return None


def _number_in(text: str) -> float | None:
    try:
        found = float(text)
    except ValueError:
        return None
    return found if math.isfinite(found) else None


def short_text(value: object, max_chars: int) -> str | None:
    """A stripped, capped string (or a small integer as text); anything else is None."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _SAFE_INT_MAX:
        return str(value)
    if not isinstance(value, str):
        return None
    return value.strip()[:max_chars] or None


def message_text(value: object, max_chars: int) -> str | None:
    """`short_text`, or an object or a list as compact JSON (Replicate's `error` may be an
    object), capped."""
    if isinstance(value, dict | list) and value:
        try:
            return orjson.dumps(value).decode()[:max_chars]
        except orjson.JSONEncodeError:  # nested past the 255 levels orjson writes
            return None
    return short_text(value, max_chars)


def moment(value: object) -> datetime | None:
    """Unix seconds (or milliseconds) or ISO-8601 text as an aware UTC datetime."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _from_unix(value)
    if isinstance(value, str) and 0 < len(value.strip()) <= _TIME_TEXT_MAX_CHARS:
        return _from_iso(value.strip())
    return None


def _from_unix(value: float) -> datetime | None:
    try:
        seconds = float(value)
        if seconds >= _MILLISECONDS_ABOVE:
            seconds /= 1000
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso(text: str) -> datetime | None:
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        seconds = _number_in(text)
        return None if seconds is None else _from_unix(seconds)
    if found.tzinfo is None:
        return found.replace(tzinfo=UTC)
    try:
        return found.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
