""".env.example lists every setting the code reads, and only those, each commented line
with its real default: the parser's own list (`setting_names`) is the reference, so the
two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas.settings import (
    CLIENT_SETTINGS,
    PREFIX,
    RelaySettings,
    Settings,
    setting_names,
)

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
# `TASKLEDGER_X=value`, set or commented out (`# TASKLEDGER_X=value`).
LINE = re.compile(r"^(?P<commented>#\s*)?(?P<name>TASKLEDGER_[A-Z0-9_<>]+)=(?P<value>.*)$")
PER_PROVIDER = PREFIX + "PROVIDER_<NAME>_"


def listed() -> list[tuple[str, str, bool]]:
    """Each setting line: its name, its value, and whether it is commented out."""
    found = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := LINE.match(line.strip()):
            found.append((match["name"], match["value"].strip(), bool(match["commented"])))
    return found


def plain_names() -> set[str]:
    """The names of one setting each, without the prefix (not a provider's)."""
    return {
        name.removeprefix(PREFIX)
        for name, _, _ in listed()
        if name.removeprefix(PREFIX) in {"PROVIDERS", "PROVIDERS_DIR"}
        or not name.startswith(PREFIX + "PROVIDER_")
    }


def test_every_setting_the_code_reads_is_listed_and_nothing_else() -> None:
    known = setting_names(Settings).plain | setting_names(RelaySettings).plain
    assert plain_names() == known | set(CLIENT_SETTINGS)


def test_every_field_of_a_provider_is_listed_once_as_a_pattern_and_nothing_else() -> None:
    fields = [
        name.removeprefix(PER_PROVIDER) for name, _, _ in listed() if name.startswith(PER_PROVIDER)
    ]
    assert sorted(fields) == sorted(setting_names(Settings).provider_fields)


def test_a_named_provider_line_ends_with_a_field_the_code_reads() -> None:
    fields = setting_names(Settings).provider_fields
    named = [
        name
        for name, _, _ in listed()
        if name.startswith(PREFIX + "PROVIDER_") and not name.startswith(PER_PROVIDER)
    ]
    assert named, "the example names no provider's setting"
    assert [name for name in named if not any(name.endswith("_" + f) for f in fields)] == []


def test_no_setting_is_listed_twice() -> None:
    names = [name for name, _, _ in listed()]
    assert sorted({n for n in names if names.count(n) > 1}) == []


@pytest.mark.parametrize("kind", [Settings, RelaySettings], ids=["service", "relay"])
def test_each_commented_value_is_the_default(kind: type[Settings] | type[RelaySettings]) -> None:
    """Uncommenting every line changes nothing: each shows its default (or is empty)."""
    lines = [line for line in listed() if not line[0].startswith(PER_PROVIDER)]
    copied = {name: value for name, value, commented in lines if not commented}
    uncommented = {name: value for name, value, _ in lines}
    assert kind.from_environ(uncommented) == kind.from_environ(copied)
