"""How the console shows the API's answers: values made fit for a terminal, tables, JSON."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table

from schemas.clock import utc_now
from schemas.fold import LAST_ERROR_MARK
from schemas.states import State

PIPE_WIDTH_COLUMNS = 1000
NEVER = datetime.min.replace(tzinfo=UTC)
TASK_COLUMNS = (
    "ref",
    "provider",
    "state",
    "progress",
    "confirmed",
    "conflict",
    "created",
    "terminal",
    "provider task id",
    "attention",
)
# `tasks --stuck`: how long each has waited, and why (its flag, the last poll's error).
STUCK_COLUMNS = (
    "ref",
    "provider",
    "state",
    "confirmed",
    "age",
    "polls",
    "next poll",
    "provider task id",
    "attention",
    "last error",
)

Figure = Callable[[Mapping[str, Any]], str]


def show(*renderables: RenderableType, fit: bool = True) -> None:
    """Print with rich, fitted to the terminal; else (a pipe, or `fit=False`) one line per row."""
    if fit and stdout_is_terminal():
        out = Console(markup=False, highlight=False, emoji=False)
        out.print(*renderables, sep="\n")
        return
    buffer = io.StringIO()
    out = Console(file=buffer, width=PIPE_WIDTH_COLUMNS, markup=False, highlight=False, emoji=False)
    out.print(*renderables, sep="\n")
    sys.stdout.writelines(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def new_table(*columns: str, wrap: Iterable[str] = ()) -> Table:
    """A borderless table; on a narrow terminal only the `wrap` columns fold."""
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column not in wrap)
    return table


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# -- tables of the API's answers ------------------------------------------------


def task_table(
    tasks: Iterable[Mapping[str, Any]], *, stuck: bool = False, now: datetime | None = None
) -> Table:
    """The tasks, one row each; `stuck`: with their age (at `now`) and last error."""
    if stuck:
        return stuck_table(tasks, now or utc_now())
    table = new_table(*TASK_COLUMNS)
    for task in tasks:
        table.add_row(
            text(task.get("ref")),
            text(task.get("provider")),
            text(task.get("state")),
            percent(task.get("progress")),
            yes_no(task.get("confirmed")),
            yes_no(task.get("conflict")),
            clock_text(task.get("created_at")),
            clock_text(task.get("terminal_at")),
            text(task.get("provider_task_id")),
            text(task.get("attention")),
        )
    return table


def stuck_table(tasks: Iterable[Mapping[str, Any]], now: datetime) -> Table:
    table = new_table(*STUCK_COLUMNS)
    for task in tasks:
        reason, error = attention_parts(task.get("attention"))
        created = moment(task.get("created_at"))
        table.add_row(
            text(task.get("ref")),
            text(task.get("provider")),
            text(task.get("state")),
            yes_no(task.get("confirmed")),
            duration((now - created).total_seconds()) if created != NEVER else "",
            number(task.get("poll_attempts")),
            clock_text(task.get("next_poll_at")),
            text(task.get("provider_task_id")),
            reason,
            error,
        )
    return table


def attention_parts(value: Any) -> tuple[str, str]:
    """A task's `attention` as (why it is flagged, the last poll's error it names)."""
    reason, _, error = text(value).partition(LAST_ERROR_MARK)
    return reason, error


def audit_table(providers: list[dict[str, Any]]) -> Table:
    """One column per provider, one row per figure: a handful of providers fit any terminal."""
    table = new_table("", *(text(p.get("provider")) for p in providers))
    for column in list(table.columns)[1:]:
        column.justify = "right"
    for label, figure in audit_rows(providers):
        table.add_row(label, *(figure(p) for p in providers))
    return table


def audit_rows(providers: list[dict[str, Any]]) -> list[tuple[str, Figure]]:
    states = _ordered_states({s for p in providers for s in as_mapping(p.get("by_state"))})
    sizes = sorted({r for p in providers for r in as_mapping(p.get("billable_seconds"))})
    return [
        ("tasks", _field("tasks")),
        *[(f"  {s}", _nested("by_state", s, lambda n: number(n or 0))) for s in states],
        ("terminal", _field("terminal")),
        ("recovered by poll", _field("recovered_by_poll")),
        ("missed callback rate", lambda p: rate(p.get("missed_callback_rate"))),
        ("duplicate deliveries", _field("duplicates")),
        ("unmatched deliveries", _field("unmatched")),
        ("unrecognized deliveries", _field("unrecognized")),
        ("ignored deliveries", _field("ignored")),
        ("tasks needing attention", _field("needs_attention")),
        ("conflicts", _field("conflicts")),
        ("lost", _field("lost")),
        ("time to terminal, median", _nested("time_to_terminal_seconds", "median", duration)),
        ("time to terminal, p95", _nested("time_to_terminal_seconds", "p95", duration)),
        *[(f"billable seconds, {text(r)}", _nested("billable_seconds", r)) for r in sizes],
        ("cost", lambda p: money(p.get("cost"))),
    ]


def _field(name: str) -> Figure:
    return lambda provider: number(provider.get(name))


def _nested(name: str, key: str, render: Callable[[Any], str] | None = None) -> Figure:
    def figure(provider: Mapping[str, Any]) -> str:
        return (render or number)(as_mapping(provider.get(name)).get(key))

    return figure


def _ordered_states(names: set[str]) -> list[str]:
    known = [s.value for s in State if s.value in names]
    return known + sorted(names - set(known))


def change_line(change: Mapping[str, Any]) -> str:
    """`seq  at  task  from → to  source  now <state>`, aligned for reading and grep."""
    task = as_mapping(change.get("task"))
    before = text(change.get("from_state")) or "(new)"
    return (
        f"{text(change.get('seq')):>8}  {clock_text(change.get('at'), precise=True)}  "
        f"{text(change.get('task_ref'))}  {before:>9} → {text(change.get('to_state')):<9}  "
        f"{text(change.get('source')):<7}  now {text(task.get('state'))}"
    )


def change_json(change: Mapping[str, Any]) -> str:
    """One change as one line of JSON (`changes --json`): the API's object as it came."""
    return json.dumps(change, ensure_ascii=False, separators=(",", ":"))


# -- values ---------------------------------------------------------------------


def text(value: Any) -> str:
    """A value fit for a terminal: control characters (an ANSI escape from a sender) made inert."""
    if value is None:
        return ""
    raw = value if isinstance(value, str) else str(value)
    return "".join(c if c.isprintable() else "?" for c in raw)


def moment(value: Any) -> datetime:
    """An API timestamp as an aware UTC datetime; a missing or unreadable one sorts first."""
    if not isinstance(value, str):
        return NEVER
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return NEVER
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)


def clock_text(value: Any, *, precise: bool = False) -> str:
    when = moment(value)
    if when == NEVER:
        return text(value)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else f"{when:%Y-%m-%d %H:%M:%S}"


def percent(value: Any) -> str:
    if not is_number(value):
        return ""
    return f"{value:.0f}%"


def rate(value: Any) -> str:
    if not is_number(value):
        return "-"
    return f"{value * 100:.1f}%"


def number(value: Any) -> str:
    if not is_number(value):
        return "-" if value is None else text(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def money(value: Any) -> str:
    if not is_number(value):
        return "-"
    return f"{value:,.2f}"


def size_text(value: Any) -> str:
    """A byte count for people: `512 B`, `1.5 MiB`; empty when there is none."""
    if not is_number(value):
        return ""
    size, units = float(value), ("B", "KiB", "MiB", "GiB", "TiB")
    unit = 0
    while size >= 1024 and unit < len(units) - 1:
        size, unit = size / 1024, unit + 1
    return f"{int(size)} B" if unit == 0 else f"{size:.1f} {units[unit]}"


def duration(value: Any) -> str:
    if not is_number(value):
        return "-"
    minutes, seconds = divmod(float(value), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02.0f}s" if minutes else f"{seconds:.1f}s"


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def key_values(fields: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={text(v)}" for k, v in fields.items() if v is not None and v != "")


def objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def as_mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def print_listing(
    found: list[dict[str, Any]], as_json: bool, empty: str, table: Callable[[], RenderableType]
) -> None:
    """A list command's output: JSON, or `empty` when there is nothing, or the table."""
    if as_json:
        print_json(found)
    elif not found:
        print(empty)
    else:
        show(table(), fit=False)


def print_shown_once(
    shown: dict[str, Any], as_json: bool, facts: RenderableType, secret: str, warning: str
) -> None:
    """What the service shows this once (a new key, a signing secret), and a word saying so
    on standard error, where it does not spoil the JSON."""
    if as_json:
        print_json(shown)
    else:
        show(facts)
        print(secret)
    print(warning, file=sys.stderr)
