"""Which outputs of a succeeded task the archive keeps, by when, and where each comes from.

Pure: a task's `result` in, artifact plans out. OpenAI's outputs are API paths fetched
with the key (`content`); every other provider's are the URLs of its result (`urls`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# OpenAI's variants worth keeping: the spritesheet is a scrubbing aid, not an outcome.
ARCHIVED_VARIANTS = ("video", "thumbnail")
# A result URL whose lifetime nobody knows is tried for this long after the success.
UNKNOWN_LIFETIME_SECONDS = 86_400.0
CONTENT, URLS = "content", "urls"


@dataclass(frozen=True, slots=True)
class Output:
    """One output: its name in the archive and where in the result its source is."""

    name: str
    source: str


@dataclass(frozen=True, slots=True)
class Source:
    """Where an output is fetched from: an API path of the provider (sent with its key)
    or a URL as the provider gave it."""

    kind: str  # CONTENT or URLS
    location: str


def outputs(result: dict[str, Any] | None) -> list[Output]:
    """The outputs a result names, in a stable order (their names are their identity)."""
    if not result:
        return []
    found: list[Output] = []
    content = result.get(CONTENT)
    if isinstance(content, dict):
        found += [
            Output(variant, f"{CONTENT}:{variant}")
            for variant in ARCHIVED_VARIANTS
            if isinstance(content.get(variant), str)
        ]
    urls = result.get(URLS)
    if isinstance(urls, list):
        found += [
            Output(f"output-{index + 1}", f"{URLS}:{index}")
            for index, url in enumerate(urls)
            if isinstance(url, str) and url
        ]
    return found


def locate(result: dict[str, Any] | None, source: str) -> Source | None:
    """The current location of an output in its task's result; None when it is gone."""
    kind, _, key = source.partition(":")
    place = (result or {}).get(kind)
    if kind == CONTENT and isinstance(place, dict):
        found = place.get(key)
    elif kind == URLS and isinstance(place, list) and key.isdigit() and int(key) < len(place):
        found = place[int(key)]
    else:
        return None
    return Source(kind, found) if isinstance(found, str) and found else None


def expires_at(result: dict[str, Any] | None, now: datetime, ttl_seconds: float | None) -> datetime:
    """When the outputs stop being fetchable: the result's own `expires_at`, else the
    provider's URL lifetime (or a day, unknown) from now."""
    said = (result or {}).get("expires_at")
    if isinstance(said, str):
        try:
            when = datetime.fromisoformat(said)
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            return when
    return now + timedelta(seconds=ttl_seconds or UNKNOWN_LIFETIME_SECONDS)
