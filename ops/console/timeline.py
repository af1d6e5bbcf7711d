"""What `taskledger show` prints of a task: its facts, and its timeline in the order it happened
(evidence, transitions, outputs, and the events sent to the product with each try)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.table import Table

from ops.console.render import (
    NEVER,
    as_int,
    as_mapping,
    clock_text,
    key_values,
    moment,
    new_table,
    objects,
    percent,
    size_text,
    text,
    yes_no,
)

# The fields without which an answer is not a task (another service's JSON, say).
TASK_FIELDS = ("ref", "provider", "state")
REQUEST_FIELDS_SHOWN = ("duration", "seconds", "resolution", "size", "aspect_ratio")
SHA256_SHOWN_CHARS = 12


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a task's timeline."""

    at: datetime
    rank: int  # at the same instant: registration, submission, evidence, then transitions
    order: int
    what: str
    detail: str


def task_facts(task: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the ledger holds about a task, minus what may carry a secret or a prompt."""
    facts = [
        ("ref", text(task.get("ref"))),
        ("provider", text(task.get("provider"))),
        ("provider task id", text(task.get("provider_task_id"))),
        ("owner", text(task.get("owner"))),
        ("model", text(task.get("model"))),
        ("request", request_summary(task.get("request"))),
        ("state", f"{text(task.get('state'))}, from {text(task.get('state_source'))}"),
        ("progress", percent(task.get("progress"))),
        ("confirmed", yes_no(task.get("confirmed"))),
        ("conflict", yes_no(task.get("conflict"))),
        ("recovered by poll", yes_no(task.get("recovered"))),
        ("submission", text(task.get("submission")) or "by the owner"),
        ("needs attention", text(task.get("attention"))),
        ("result", result_summary(task.get("result"))),
        ("created", clock_text(task.get("created_at"), precise=True)),
        ("last event", clock_text(task.get("last_event_at"), precise=True)),
        ("terminal", clock_text(task.get("terminal_at"), precise=True)),
        ("next poll", clock_text(task.get("next_poll_at"), precise=True)),
        ("poll attempts", text(task.get("poll_attempts"))),
        ("version", text(task.get("version"))),
    ]
    return [(name, value) for name, value in facts if value]


def request_summary(request: Any) -> str:
    """The request's length and size only: the rest (the prompt above all) is customer content."""
    if not isinstance(request, dict):
        return ""
    nested = request.get("input")
    fields = {**request, **nested} if isinstance(nested, dict) else request
    shown = [(k, fields[k]) for k in REQUEST_FIELDS_SHOWN if _scalar(fields.get(k))]
    return ", ".join(f"{k}={text(v)}" for k, v in shown)


def result_summary(result: Any) -> str:
    """What came of the task, without its media URLs (see --json for those)."""
    if not isinstance(result, dict):
        return ""
    parts = []
    if isinstance(result.get("urls"), list):
        parts.append(f"{len(result['urls'])} media URL(s), see --json")
    error = result.get("error")
    if isinstance(error, dict):
        parts.append(f"error {text(error.get('code')) or '-'}: {text(error.get('message'))}")
    if result.get("lost_reason"):
        parts.append(f"lost: {text(result['lost_reason'])}")
    others = sorted(set(result) - {"urls", "error", "lost_reason"})
    if others:
        parts.append("also " + ", ".join(text(k) for k in others))
    return "; ".join(parts)


def timeline(task: Mapping[str, Any]) -> list[Entry]:
    """Registration, submission, deliveries, polls, transitions, the outputs' archiving and
    the events sent to the product (and each try), in the order they happened."""
    events = as_mapping(task.get("timeline"))
    entries = [registration_entry(task), *submission_entries(task)]
    entries += [delivery_entry(d) for d in objects(events.get("deliveries"))]
    entries += [poll_entry(p) for p in objects(events.get("polls"))]
    entries += [transition_entry(t) for t in objects(events.get("transitions"))]
    entries += [artifact_entry(a) for a in objects(events.get("artifacts"))]
    for number, message in enumerate(objects(events.get("messages"))):
        entries += message_entries(message, number)
    return sorted(entries, key=lambda e: (e.at, e.rank, e.order))


def registration_entry(task: Mapping[str, Any]) -> Entry:
    owner = text(task.get("owner")) or "-"
    detail = f"{text(task.get('provider'))} {text(task.get('model'))}, owner {owner}"
    return Entry(moment(task.get("created_at")), 0, 0, "registered", detail)


def submission_entries(task: Mapping[str, Any]) -> list[Entry]:
    if not task.get("submission"):
        return []
    at = moment(task.get("submitted_at") or task.get("created_at"))
    return [Entry(at, 1, 0, "submission", f"by taskledger: {text(task['submission'])}")]


def delivery_entry(delivery: Mapping[str, Any]) -> Entry:
    fields = {
        "state": delivery.get("state"),
        "outcome": delivery.get("outcome"),
        "reason": delivery.get("reason"),
        "auth": delivery.get("auth"),
        "key": _short(text(delivery.get("delivery_key"))),
    }
    detail = key_values(fields)
    duplicates = delivery.get("duplicate_count") or 0
    if duplicates:
        last = clock_text(delivery.get("last_seen_at"), precise=True)
        detail += f" duplicates={text(duplicates)} (last {last})"
    what = f"delivery #{text(delivery.get('id'))}"
    return Entry(moment(delivery.get("received_at")), 2, as_int(delivery.get("id")), what, detail)


def poll_entry(poll: Mapping[str, Any]) -> Entry:
    fields = {
        "http": poll.get("http_status"),
        "state": poll.get("state"),
        "progress": percent(poll.get("progress")) or None,
        "outcome": poll.get("outcome"),
        "error": poll.get("error"),
    }
    what = f"poll #{text(poll.get('id'))}"
    at = moment(poll.get("observed_at"))
    return Entry(at, 2, as_int(poll.get("id")), what, key_values(fields))


def transition_entry(transition: Mapping[str, Any]) -> Entry:
    before = text(transition.get("from_state")) or "(new)"
    source = text(transition.get("source"))
    detail = f"{before} → {text(transition.get('to_state'))} via {source}"
    evidence = {"webhook": "delivery", "poll": "poll"}.get(source)
    if evidence and transition.get("source_id") is not None:
        detail += f" ({evidence} #{text(transition['source_id'])})"
    seq = transition.get("seq")
    return Entry(moment(transition.get("at")), 3, as_int(seq), f"transition #{text(seq)}", detail)


def artifact_entry(artifact: Mapping[str, Any]) -> Entry:
    """An output: when it was archived (or, not archived, planned) and what came of it."""
    archived = artifact.get("archived_at")
    sha256 = text(artifact.get("sha256"))[:SHA256_SHOWN_CHARS]
    fields = {
        "state": artifact.get("state"),
        "size": size_text(artifact.get("size")) or None,
        "sha256": f"{sha256}…" if sha256 else None,
        "host": artifact.get("source_host"),
        "attempts": artifact.get("attempts") or None,
        "expires": None if archived else clock_text(artifact.get("expires_at")),
        "error": artifact.get("last_error"),
    }
    at = moment(archived or artifact.get("created_at"))
    what = f"output {text(artifact.get('name'))}"
    return Entry(at, 4, as_int(artifact.get("id")), what, key_values(fields))


def message_entries(message: Mapping[str, Any], number: int) -> list[Entry]:
    """An event sent to the product, where it stands at each endpoint, then each try."""
    dispatches = objects(message.get("dispatches"))
    fields = {
        "seq": message.get("seq"),
        "unconfirmed": "yes" if message.get("unconfirmed") else None,
        "msg": message.get("msg_id"),
    }
    where = "; ".join(_dispatch_text(d) for d in dispatches)
    if not where:
        where = "to no endpoint" if message.get("fanned_out") else "not fanned out yet"
    what = f"event {text(message.get('event_type'))}"
    at = moment(message.get("created_at"))
    entries = [Entry(at, 5, number, what, f"{key_values(fields)} {where}")]
    for dispatch in dispatches:
        endpoint = text(dispatch.get("endpoint_id"))
        for attempt in objects(dispatch.get("attempt_log")):
            entries.append(_attempt_entry(attempt, endpoint, number))
    return entries


def _dispatch_text(dispatch: Mapping[str, Any]) -> str:
    fields = {
        "attempts": dispatch.get("attempts"),
        "last": dispatch.get("last_status"),
        "error": dispatch.get("last_error"),
    }
    return f"{text(dispatch.get('endpoint_id'))} {text(dispatch.get('state'))} {key_values(fields)}"


def _attempt_entry(attempt: Mapping[str, Any], endpoint: str, number: int) -> Entry:
    latency = attempt.get("latency_ms")
    fields = {
        "status": attempt.get("status_code"),
        "latency": f"{latency:.0f}ms" if isinstance(latency, int | float) else None,
        "error": attempt.get("error"),
        "answer": _short(text(attempt.get("answer")), 60) or None,
    }
    return Entry(moment(attempt.get("at")), 6, number, f"sent to {endpoint}", key_values(fields))


def facts_table(facts: Iterable[tuple[str, str]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in facts:
        table.add_row(name, value)
    return table


def left_out(task: Mapping[str, Any]) -> list[str]:
    """A line saying how many older entries of each kind the service left out, if any."""
    omitted = as_mapping(as_mapping(task.get("timeline")).get("omitted"))
    counts = [f"{kind} {n}" for kind, n in omitted.items() if isinstance(n, int) and n > 0]
    return [f"older entries not shown: {', '.join(counts)}"] if counts else []


def timeline_table(entries: Iterable[Entry]) -> Table:
    table = new_table("at (UTC)", "event", "detail", wrap=("detail",))
    for entry in entries:
        at = "" if entry.at == NEVER else clock_text(entry.at.isoformat(), precise=True)
        table.add_row(at, entry.what, entry.detail)
    return table


def _short(value: str, width: int = 20) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)
