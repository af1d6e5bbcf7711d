"""`taskledger providers check FILE`: what taskledger understood of a provider definition,
and whether the file's own example bodies read as it says they should."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schemas.definition import Definition, load_definition
from schemas.errors import WireFormatError
from schemas.wire import normalize_status, parse_submit_response


def check(path: Path) -> tuple[str, bool]:
    """The report to print, and whether every example read as expected."""
    definition = load_definition(path)
    lines = describe(definition)
    results = [_example(definition, n, example) for n, example in enumerate(definition.examples)]
    lines += [line for line, _ in results] or ["examples: none in the file"]
    return "\n".join(lines), all(ok for _, ok in results)


def describe(definition: Definition) -> list[str]:
    submit, poll = definition.submit, definition.poll
    callback = "none" if submit.callback == "none" else f"{submit.callback} {submit.callback_name}"
    words = ", ".join(f"{word} -> {state}" for word, state in definition.states.items())
    return [
        f"kind {definition.name} ({definition.source})",
        f"  auth: {definition.auth.scheme}"
        + (f" ({definition.auth.header})" if definition.auth.scheme == "header" else ""),
        f"  submit: {submit.method} {submit.path or '(not submitted by taskledger)'},"
        f" request {submit.body}, callback URL: {callback}",
        f"  poll: {poll.method} {poll.path}"
        + "".join(f", {k}: {v}" for k, v in poll.headers.items()),
        f"  fields: {', '.join(f'{n}={_paths(f.paths)}' for n, f in definition.fields.items())}",
        f"  states: {words}",
        *_fetch_lines(definition),
        f"  callbacks: {definition.callback_shape}, verified by {definition.verify}",
        f"  result URLs live: {_seconds(definition.result_ttl_seconds)};"
        f" expected {_seconds(definition.expected_seconds)}, lost after"
        f" {_seconds(definition.max_age_seconds)}",
        f"  sunset: {definition.sunset or 'none'}",
    ]


def _example(definition: Definition, n: int, example: Mapping[str, Any]) -> tuple[str, bool]:
    body, expected = example.get("body"), example.get("state")
    read = parse_submit_response if example.get("as") == "submit" else normalize_status
    try:
        seen = read(definition, body)
    except WireFormatError as exc:
        return f"example {n + 1}: not read ({exc.reason}: {exc})", expected is None
    got = f"task {seen.provider_task_id}, {seen.state}, urls {list(seen.result_urls)}"
    ok = expected is None or seen.state.value == expected
    return f"example {n + 1}: {got}" + ("" if ok else f" -- expected {expected}"), ok


def _fetch_lines(definition: Definition) -> list[str]:
    """Words that only say "finished", and where the outcome is fetched then."""
    if not definition.fetch_to_know:
        return []
    words = ", ".join(sorted(definition.fetch_to_know))
    result = definition.result
    where = "(no [result]: the status is polled again)"
    if result is not None:
        fields = ", ".join(f"{n}={_paths(f.paths)}" for n, f in result.fields.items())
        failed = ", ".join(str(code) for code in result.failed_status) or "none"
        where = f"GET {result.path}, fields {fields}; failed when HTTP {failed}"
        if result.error_type is not None:
            where += f", or any error answer naming {_paths(result.error_type.paths)}"
    return [f"  finished, outcome fetched: {words}: {where}"]


def _headers(headers: Mapping[str, str]) -> str:
    return "".join(f", {name}: {value}" for name, value in headers.items())


def _paths(paths: Any) -> str:
    return "|".join(path.text for path in paths) or "-"


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g} s"
