"""Where a field is in a provider's JSON, written as a path: `data.files[].file_url`.

A path is dot-separated keys; `[]` maps the rest of the path over a list, `[N]` takes one
element, and `|json` parses a string that holds JSON (kie's `resultJson`; an object or a
list there is taken as it is). `$` alone is the whole body. A field may be
given as several paths: the first that finds a value wins; or as `{ all = [paths] }`: every
path's values, together (APIDot's files are in one place, the other, or both).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.json_text import storable_json

_SEGMENT = re.compile(r"(?P<key>[^.\[\]|]+)(?P<rest>(?:\[\d*\]|\|json)*)")
_SUFFIX = re.compile(r"\[(?P<index>\d*)\]|\|json")
_MISSING: Any = object()
WHOLE_BODY = "$"


class PathError(ValueError):
    """A path that cannot be read (in a definition file: names the path)."""


@dataclass(frozen=True, slots=True)
class Step:
    key: str | None = None
    index: int | None = None
    each: bool = False
    json: bool = False


@dataclass(frozen=True, slots=True)
class FieldPath:
    text: str
    steps: tuple[Step, ...]

    @classmethod
    def parse(cls, text: str) -> FieldPath:
        """`key.key[].key[0]|json.key`: dot-separated keys, each with its suffixes; `$`,
        the whole body."""
        if text == WHOLE_BODY:
            return cls(text, ())
        steps: list[Step] = []
        for segment in text.split("."):
            match = _SEGMENT.fullmatch(segment)
            if match is None:
                raise PathError(f"cannot read path {text!r} at {segment!r}")
            steps.append(Step(key=match["key"]))
            for suffix in _SUFFIX.finditer(match["rest"]):
                steps.append(_suffix(suffix))
        return cls(text, tuple(steps))

    def read(self, body: object) -> Any:
        """The value at this path, a list where it maps over a list; None when absent."""
        value = _walk(body, self.steps)
        return None if value is _MISSING else value

    def present(self, body: object) -> bool:
        """Whether the path reaches a key at all (its value may be null)."""
        return _walk(body, self.steps) is not _MISSING

    def split_each(self) -> tuple[FieldPath, FieldPath | None]:
        """The path up to its first `[]`, and the rest after it (None without a `[]`)."""
        for position, step in enumerate(self.steps):
            if step.each:
                head, _, tail = self.text.partition("[]")
                rest = FieldPath(tail.lstrip("."), self.steps[position + 1 :])
                return FieldPath(head, self.steps[:position]), rest if rest.steps else None
        return self, None


def _suffix(match: re.Match[str]) -> Step:
    if match.group(0) == "|json":
        return Step(json=True)
    index = match["index"]
    return Step(each=True) if index == "" else Step(index=int(index))


def _walk(value: Any, steps: Sequence[Step]) -> Any:
    for position, step in enumerate(steps):
        if value is _MISSING or value is None:
            return _MISSING
        if step.each:
            if not isinstance(value, list):
                return _MISSING
            found = [_walk(item, steps[position + 1 :]) for item in value]
            return [item for item in found if item is not _MISSING and item is not None]
        value = _step(value, step)
    return value


def _step(value: Any, step: Step) -> Any:
    if step.key is not None:
        return value.get(step.key, _MISSING) if isinstance(value, dict) else _MISSING
    if step.index is not None:
        if isinstance(value, list) and step.index < len(value):
            return value[step.index]
        return _MISSING
    if isinstance(value, str | bytes):
        try:
            return storable_json(value)
        except orjson.JSONDecodeError:
            return _MISSING
    if isinstance(value, dict | list):
        return value  # sent as JSON rather than as text holding it
    return _MISSING


@dataclass(frozen=True, slots=True)
class Field:
    """One field, found at the first of its paths that holds a value (`union`: at all of
    them, their values listed together)."""

    paths: tuple[FieldPath, ...]
    union: bool = False

    @classmethod
    def of(cls, spec: str | Iterable[str] | Mapping[str, Any]) -> Field:
        if isinstance(spec, Mapping):
            if set(spec) != {"all"}:
                raise PathError(f"a field given as a table must be {{ all = [paths] }}: {spec!r}")
            return cls(cls.of(spec["all"]).paths, union=True)
        texts = [spec] if isinstance(spec, str) else list(spec)
        return cls(tuple(FieldPath.parse(text) for text in texts))

    def read(self, body: object) -> Any:
        if self.union:
            return self._read_all(body)
        for path in self.paths:
            value = path.read(body)
            if value is not None and value != []:
                return value
        return None

    def present(self, body: object) -> bool:
        """Whether any of its paths reaches a key (even one holding null)."""
        return any(path.present(body) for path in self.paths)

    def path_of(self, body: object) -> FieldPath:
        """The path its value is read from: the first holding one (else the first)."""
        return next((p for p in self.paths if p.read(body) is not None), self.paths[0])

    def _read_all(self, body: object) -> list[Any] | None:
        found: list[Any] = []
        for path in self.paths:
            value = path.read(body)
            found.extend(value if isinstance(value, list) else [] if value is None else [value])
        return found or None
