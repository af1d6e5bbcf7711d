"""The read commands of `taskledger`, against an admin API answered by `httpx.MockTransport`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.cli import main
from ops.console import export
from ops.demo import format_report, run_demo, task_count
from tests.support.servers import free_port

URL = "http://ledger.test"
TOKEN = "admin-token-for-tests"
CONNECTION = ["--url", URL, "--token", TOKEN]
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `.env` of the repository and no admin token from the caller's environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKLEDGER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("TASKLEDGER_URL", raising=False)


class Api:
    """A mock admin API: answers from `handler` and keeps every request it saw."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def run(self, *argv: str) -> int:
        command, *rest = argv
        return main([command, *CONNECTION, *rest], transport=httpx.MockTransport(self))

    def params(self, index: int = -1) -> dict[str, str]:
        return dict(self.requests[index].url.params)


def answer(body: dict[str, Any], status: int = 200) -> Handler:
    return lambda request: httpx.Response(status, json=body)


def task(ref: str, **fields: Any) -> dict[str, Any]:
    return {
        "ref": ref,
        "provider": "apidot",
        "provider_task_id": f"task-unified-{ref[-3:]}",
        "owner": "team-a",
        "model": "sora-2",
        "request": {"prompt": "a fox in the snow, confidential", "duration": 8},
        "state": "running",
        "progress": 40,
        "result": None,
        "state_source": "webhook",
        "confirmed": False,
        "conflict": False,
        "recovered": False,
        "version": 2,
        "created_at": "2025-03-01T12:00:00.250000+00:00",
        "updated_at": "2025-03-01T12:01:00+00:00",
        "last_event_at": "2025-03-01T12:01:00+00:00",
        "terminal_at": None,
        "next_poll_at": "2025-03-01T12:05:00+00:00",
        "poll_attempts": 1,
        "submission": None,
        **fields,
    }


def row_of(out: str, ref: str) -> list[str]:
    (line,) = [line for line in out.splitlines() if line.startswith(ref)]
    return line.split()


# -- tasks ---------------------------------------------------------------------


def test_tasks_prints_one_row_per_task(capsys: pytest.CaptureFixture[str]) -> None:
    done = task("tl_done", state="succeeded", progress=100, confirmed=True)
    done["terminal_at"] = "2025-03-01T12:02:00+00:00"
    tasks = [done, task("tl_open", provider="openai", conflict=True, provider_task_id=None)]
    api = Api(answer({"tasks": tasks, "next_cursor": None}))
    assert api.run("tasks") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["ref", "provider", "state"]
    done_row = "tl_done apidot succeeded 100% yes no 2025-03-01 12:00:00 2025-03-01 12:02:00"
    assert row_of(out, "tl_done") == [*done_row.split(), "task-unified-one"]
    open_row = "tl_open openai running 40% no yes 2025-03-01 12:00:00"
    assert row_of(out, "tl_open") == open_row.split()


def test_tasks_sends_the_filters_and_the_admin_token(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(answer({"tasks": [], "next_cursor": None}))
    argv = ["--state", "running", "--provider", "apidot", "--since", "2025-03-01", "--conflict"]
    assert api.run("tasks", *argv) == 0
    assert api.params() == {
        "state": "running",
        "provider": "apidot",
        "since": "2025-03-01T00:00:00+00:00",
        "conflict": "true",
        "limit": "50",
    }
    assert api.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert "no task matches" in capsys.readouterr().err


def test_tasks_follows_the_cursor_until_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    pages = {
        None: {"tasks": [task("tl_001"), task("tl_002")], "next_cursor": "c2"},
        "c2": {"tasks": [task("tl_003")], "next_cursor": "c3"},
    }
    api = Api(lambda request: httpx.Response(200, json=pages[request.url.params.get("cursor")]))
    assert api.run("tasks", "--limit", "3") == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["tl_001", "tl_002", "tl_003"]
    assert [r.url.params.get("limit") for r in api.requests] == ["3", "1"]
    assert "showing the first 3" in err


def test_tasks_json_prints_the_tasks_as_the_api_gave_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tasks = [task("tl_001")]
    api = Api(answer({"tasks": tasks, "next_cursor": None}))
    assert api.run("tasks", "--json") == 0
    assert json.loads(capsys.readouterr().out) == tasks


def test_tasks_makes_terminal_escapes_from_a_provider_inert(
    capsys: pytest.CaptureFixture[str],
) -> None:
    forged = task("tl_001", provider_task_id="\x1b]52;c;cm0gLXJm\x07\x1b[2J")
    assert Api(answer({"tasks": [forged], "next_cursor": None})).run("tasks") == 0
    assert "\x1b" not in capsys.readouterr().out


def test_tasks_stuck_shows_age_reason_and_last_error(capsys: pytest.CaptureFixture[str]) -> None:
    created = (datetime.now(UTC) - timedelta(hours=2, minutes=5, seconds=30)).isoformat()
    flag = (
        "overdue: succeeded not confirmed after 2h 05m (expected 5m);"
        " last poll error: apidot: 503 from the provider"
    )
    flagged = task("tl_old", state="succeeded", created_at=created, attention=flag)
    api = Api(answer({"tasks": [flagged], "next_cursor": None}))
    assert api.run("tasks", "--stuck") == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for column in ("age", "polls", "attention", "last error"):
        assert column in header
    row = " ".join(row_of(out, "tl_old"))
    assert row.startswith("tl_old apidot succeeded no 2h 05m 1 2025-03-01 12:05:00")
    assert row.endswith(
        "overdue: succeeded not confirmed after 2h 05m (expected 5m) apidot: 503 from the provider"
    )
    assert api.params() == {"stuck": "true", "limit": "50"}


# -- show ----------------------------------------------------------------------

SECRETS = ("cb-token-secret", "fox in the snow", "v1,signature-secret", "raw-body-secret")


def shown_task() -> dict[str, Any]:
    """A task whose timeline the API lists kind by kind, not in time order."""
    delivery = {
        "id": 7,
        "provider": "apidot",
        "delivery_key": "k-7",
        "task_ref": "tl_001",
        "provider_task_id": "task-unified-001",
        "headers": {"webhook-signature": SECRETS[2]},
        "auth": "token",
        "state": "succeeded",
        "outcome": "applied",
        "duplicate_count": 2,
        "received_at": "2025-03-01T12:03:00+00:00",
        "last_seen_at": "2025-03-01T12:03:09+00:00",
    }
    poll = {
        "id": 3,
        "task_ref": "tl_001",
        "observed_at": "2025-03-01T12:01:30+00:00",
        "http_status": 200,
        "state": "running",
        "progress": 50,
        "body": SECRETS[3],
        "error": None,
        "outcome": "applied",
    }
    failed_poll = {
        **poll,
        **{"id": 2, "observed_at": "2025-03-01T12:01:00+00:00", "http_status": 503},
        **{"state": None, "progress": None, "error": "HTTP 503", "outcome": "error"},
    }
    transitions = [
        transition(9, "running", "succeeded", "webhook", "7", "2025-03-01T12:03:00.010+00:00"),
        transition(1, None, "submitted", "api", None, "2025-03-01T12:00:00.250+00:00"),
        transition(4, "submitted", "running", "poll", "3", "2025-03-01T12:01:30.010+00:00"),
    ]
    timeline = {"deliveries": [delivery], "polls": [poll, failed_poll], "transitions": transitions}
    request = {"prompt": "a fox in the snow", "duration": 8, "resolution": "720p"}
    return task(
        "tl_001",
        request=request,
        submission="sent",
        callback_url=f"https://ledger.example/callbacks/apidot/{SECRETS[0]}",
        timeline=timeline,
    )


def transition(
    seq: int, before: str | None, after: str, source: str, source_id: str | None, at: str
) -> dict[str, Any]:
    return {
        "seq": seq,
        "task_ref": "tl_001",
        "from_state": before,
        "to_state": after,
        "source": source,
        "source_id": source_id,
        "at": at,
    }


def timeline_lines(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("at (UTC)"))
    return lines[start + 1 :]


def test_show_lists_the_timeline_in_time_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert Api(answer(shown_task())).run("show", "tl_001") == 0
    events = [line.split("  ")[1].strip() for line in timeline_lines(capsys.readouterr().out)]
    assert events == [
        "registered",
        "submission",
        "transition #1",
        "poll #2",
        "poll #3",
        "transition #4",
        "delivery #7",
        "transition #9",
    ]


def test_show_details_each_kind_of_event(capsys: pytest.CaptureFixture[str]) -> None:
    assert Api(answer(shown_task())).run("show", "tl_001") == 0
    lines = timeline_lines(capsys.readouterr().out)
    detail = {line.split("  ")[1].strip(): line for line in lines}
    assert "outcome=applied auth=token" in detail["delivery #7"]
    assert "duplicates=2" in detail["delivery #7"]
    assert "http=503 outcome=error error=HTTP 503" in detail["poll #2"]
    assert "running → succeeded via webhook (delivery #7)" in detail["transition #9"]
    assert "(new) → submitted via api" in detail["transition #1"]


def test_show_never_prints_the_callback_url_headers_body_or_prompt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert Api(answer(shown_task())).run("show", "tl_001") == 0
    out = capsys.readouterr().out
    assert "duration=8, resolution=720p" in out
    assert [secret for secret in SECRETS if secret in out] == []
    assert "callbacks/" not in out


def artifact(number: int, state: str, **fields: Any) -> dict[str, Any]:
    """An output as the API lists it in a task's timeline."""
    return {
        "id": number,
        "task_ref": "tl_001",
        "provider": "apidot",
        "name": f"output-{number}",
        "source": f"urls:{number - 1}",
        "state": state,
        "expires_at": "2025-03-01T13:03:00+00:00",
        "next_attempt_at": "2025-03-01T12:03:00+00:00",
        "attempts": 1,
        "lease_owner": None,
        "lease_until": None,
        "storage_key": None,
        "size": None,
        "sha256": None,
        "content_type": None,
        "source_host": "cdn.example.com",
        "archived_at": None,
        "last_error": None,
        "created_at": "2025-03-01T12:03:00.010+00:00",
        **fields,
    }


def task_with_outputs() -> dict[str, Any]:
    sha = "ab" * 32
    archived = artifact(
        1,
        "archived",
        size=3 * 1024 * 1024 // 2,
        sha256=sha,
        content_type="video/mp4",
        storage_key=f"sha256/ab/ab/{sha}",
        archived_at="2025-03-01T12:04:00+00:00",
    )
    failed = artifact(2, "failed", attempts=3, last_error="not a video or image: \x1b[2J")
    shown = shown_task()
    shown["timeline"]["artifacts"] = [archived, failed]
    return shown


def test_show_lists_each_output_with_its_state_size_digest_host_and_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert Api(answer(task_with_outputs())).run("show", "tl_001") == 0
    out = capsys.readouterr().out
    lines = timeline_lines(out)
    detail = {line.split("  ")[1].strip(): line for line in lines}
    archived = "state=archived size=1.5 MiB sha256=abababababab… host=cdn.example.com attempts=1"
    assert archived in detail["output output-1"]
    failed = detail["output output-2"]
    assert "state=failed host=cdn.example.com attempts=3" in failed
    assert "expires=2025-03-01 13:03:00 error=not a video or image: ?[2J" in failed
    events = [line.split("  ")[1].strip() for line in lines]
    assert events[-3:] == ["transition #9", "output output-2", "output output-1"]
    assert [leak for leak in ("sha256/ab/ab", "\x1b") if leak in out] == []


def test_show_asks_for_the_ref_it_was_given(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(answer(shown_task()))
    assert api.run("show", "tl_001") == 0
    assert api.requests[0].url.path == "/v1/tasks/tl_001"


def test_show_an_unknown_ref_says_so_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(answer({"error": "not_found", "message": "no task has this ref"}, 404))
    assert api.run("show", "tl_nope") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "taskledger: no task has the ref tl_nope\n"


# -- audit ---------------------------------------------------------------------


def provider_audit(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "provider": name,
        "tasks": 10,
        "by_state": {"succeeded": 8, "failed": 2},
        "terminal": 10,
        "recovered_by_poll": 3,
        "missed_callback_rate": 0.3,
        "duplicates": 4,
        "conflicts": 0,
        "lost": 0,
        "unmatched": 1,
        "time_to_terminal_seconds": {"median": 95.0, "p95": 600.0},
        "billable_seconds": {"720p": 64.0},
        "cost": 6.4,
        **fields,
    }


def test_audit_prints_a_column_per_provider(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = provider_audit(
        "openai",
        tasks=2,
        by_state={"running": 2},
        terminal=0,
        missed_callback_rate=None,
        time_to_terminal_seconds=None,
        billable_seconds={},
        cost=None,
    )
    body = {"since": None, "until": None, "providers": [provider_audit("apidot"), quiet]}
    assert Api(answer(body)).run("audit") == 0
    out = capsys.readouterr().out
    rows = {line[:26].strip(): line[26:].split() for line in out.splitlines()[1:]}
    assert rows[""] == ["apidot", "openai"]
    assert rows["tasks"] == ["10", "2"]
    assert rows["running"] == ["0", "2"]
    assert rows["missed callback rate"] == ["30.0%", "-"]
    assert rows["time to terminal, median"] == ["1m", "35s", "-"]
    assert rows["billable seconds, 720p"] == ["64", "-"]
    assert rows["cost"] == ["6.40", "-"]


def test_audit_sends_its_window(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(answer({"since": None, "until": None, "providers": []}))
    assert api.run("audit", "--since", "2025-03-01T00:00:00Z", "--until", "2025-03-02") == 0
    assert api.params() == {
        "since": "2025-03-01T00:00:00+00:00",
        "until": "2025-03-02T00:00:00+00:00",
    }


# -- export --------------------------------------------------------------------

JSONL = [b'{"ref":"tl_001","state":"succ', b'eeded"}\n{"ref":"tl_002"', b',"state":"failed"}\n']
CSV = [
    b"ref,state,error_message\r\n",
    b'tl_001,succeeded,\r\ntl_002,failed,"two\r\nlines, ',
    b'and a ""quote"""\r\ntl_003,lost,\r\n',
]


EXPORT_MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def exported(request: httpx.Request, content: Iterator[bytes]) -> httpx.Response:
    """An export answer with the media type the service declares for the format asked."""
    kind = request.url.params.get("format", "jsonl")
    return httpx.Response(200, content=content, headers={"content-type": EXPORT_MEDIA_TYPES[kind]})


def streamed(chunks: list[bytes]) -> Handler:
    return lambda request: exported(request, iter(chunks))


@pytest.mark.parametrize(
    ("kind", "chunks", "rows"), [("jsonl", JSONL, 2), ("csv", CSV, 3)], ids=["jsonl", "csv"]
)
def test_export_to_a_file_writes_exactly_the_streamed_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str, chunks: list[bytes], rows: int
) -> None:
    target = tmp_path / f"tasks.{kind}"
    api = Api(streamed(chunks))
    assert api.run("export", "--format", kind, "-o", str(target)) == 0
    assert target.read_bytes() == b"".join(chunks)
    assert capsys.readouterr().err == f"taskledger: exported {rows} rows to {target}\n"
    assert api.params() == {"format": kind}
    assert not list(tmp_path.glob("*.partial"))


def test_export_streams_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert Api(streamed(JSONL)).run("export") == 0
    captured = capsys.readouterr()
    assert captured.out == b"".join(JSONL).decode()
    assert captured.err == ""


def test_export_shows_progress_when_stderr_is_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "_stderr_is_terminal", lambda: True)
    assert Api(streamed(JSONL)).run("export") == 0
    assert capsys.readouterr().err.endswith("taskledger: exported 2 rows\n")


def test_export_refused_leaves_no_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "tasks.jsonl"
    api = Api(answer({"error": "unauthenticated", "message": "bad token"}, 401))
    assert api.run("export", "-o", str(target)) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_cut_off_midway_leaves_no_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def cut_off() -> Iterator[bytes]:
        yield JSONL[0]
        raise httpx.ReadError("connection reset")

    target = tmp_path / "tasks.jsonl"
    api = Api(lambda request: exported(request, cut_off()))
    assert api.run("export", "-o", str(target)) == 1
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.startswith("taskledger: the request to http://ledger.test")


def test_export_to_a_missing_directory_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "missing" / "tasks.jsonl"
    assert Api(streamed(JSONL)).run("export", "-o", str(target)) == 1
    err = capsys.readouterr().err
    assert err == f"taskledger: cannot write {target}: No such file or directory\n"


def test_lines_keeps_line_endings_across_chunks() -> None:
    chunks = ["a\r", "\nb", "c\n\n", "d"]
    assert list(export.lines(chunks)) == ["a\r\n", "bc\n", "\n", "d"]


# -- changes -------------------------------------------------------------------


def change(seq: int, before: str | None = "queued", after: str = "running") -> dict[str, Any]:
    return {
        "seq": seq,
        "task_ref": f"tl_{seq:03d}",
        "from_state": before,
        "to_state": after,
        "source": "webhook",
        "source_id": str(seq),
        "at": "2025-03-01T12:00:00+00:00",
        "task": {"provider": "apidot", "provider_task_id": "t", "state": after, "result": None},
    }


class Feed:
    """The change feed: pages of at most two, new changes arriving between long polls."""

    def __init__(self, arrivals: list[list[int]], interrupt_after_calls: int) -> None:
        self.arrivals = arrivals
        self.known: list[int] = []
        self.interrupt_after_calls = interrupt_after_calls
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls > self.interrupt_after_calls:
            raise KeyboardInterrupt
        if self.arrivals:
            self.known += self.arrivals.pop(0)
        after = int(request.url.params["after"])
        page = [seq for seq in self.known if seq > after][
            : min(2, int(request.url.params["limit"]))
        ]
        body = {"changes": [change(seq) for seq in page], "last_seq": page[-1] if page else after}
        return httpx.Response(200, json=body)


def printed_seqs(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines()]


def test_changes_follow_prints_each_change_once_until_interrupted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed = Feed([[1, 2, 3], [], [], [4, 5], [6]], interrupt_after_calls=7)
    api = Api(feed)
    assert api.run("changes", "--follow") == 0
    out, err = capsys.readouterr()
    assert printed_seqs(out) == [1, 2, 3, 4, 5, 6]
    assert {r.url.params["wait"] for r in api.requests} == {"25"}
    assert err == "taskledger: stopped after seq 6\n"


def test_changes_line_shows_the_transition_and_current_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = {"changes": [change(41, None, "submitted")], "last_seq": 41}
    assert Api(answer(body)).run("changes", "--after", "40") == 0
    (line,) = capsys.readouterr().out.splitlines()
    expected = "41 2025-03-01 12:00:00.000 tl_041 (new) → submitted webhook now submitted"
    assert line.split() == expected.split()


def test_changes_without_follow_stops_once_caught_up(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(Feed([[11, 12, 13]], interrupt_after_calls=10))
    assert api.run("changes", "--after", "10") == 0
    assert printed_seqs(capsys.readouterr().out) == [11, 12, 13]
    assert [r.url.params["after"] for r in api.requests] == ["10", "12", "13"]
    assert {r.url.params["wait"] for r in api.requests} == {"0"}


def test_changes_limit_stops_after_that_many(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(Feed([[1, 2, 3, 4]], interrupt_after_calls=10))
    assert api.run("changes", "--follow", "--limit", "3") == 0
    assert printed_seqs(capsys.readouterr().out) == [1, 2, 3]
    assert [r.url.params["limit"] for r in api.requests] == ["3", "1"]


def test_changes_json_prints_each_change_as_one_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = Api(Feed([[1, 2, 3]], interrupt_after_calls=10))
    assert api.run("changes", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [change(1), change(2), change(3)]


# -- connection and errors -----------------------------------------------------


REFUSED = answer({"error": "unauthenticated", "message": "a valid bearer token is required"}, 401)


def test_a_refused_token_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert Api(REFUSED).run("tasks") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "taskledger: the service refused the token (401): "
        "pass --token or set TASKLEDGER_ADMIN_TOKEN\n"
    )


def test_a_refused_admin_token_is_called_the_admin_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Path(".env").write_text(f"TASKLEDGER_ADMIN_TOKEN={TOKEN}\n")
    assert main(["tasks", "--url", URL], transport=httpx.MockTransport(Api(REFUSED))) == 1
    assert capsys.readouterr().err.startswith(
        "taskledger: the service refused the admin token (401)"
    )


def test_a_refused_api_key_is_not_called_the_admin_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Path(".env").write_text("TASKLEDGER_ADMIN_TOKEN=the-real-admin-token\n")
    assert Api(REFUSED).run("tasks") == 1  # --token: an API key, not the admin token
    err = capsys.readouterr().err
    assert err.startswith("taskledger: the service refused the token (401)")
    assert "admin token (401)" not in err


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::1", "Invalid port"),
        ("http://127.0.0.1:99999", "port 99999 is not in 1-65535"),
        ("http://127.0.0.1:0", "port 0 is not in 1-65535"),
        ("http://", "no host"),
    ],
    ids=["unclosed-ipv6", "port-too-high", "port-zero", "no-host"],
)
def test_a_url_httpx_cannot_send_to_is_refused_as_an_argument(
    capsys: pytest.CaptureFixture[str], url: str, why: str
) -> None:
    api = Api(answer({"tasks": [], "next_cursor": None}))
    with pytest.raises(SystemExit) as exited:
        main(["tasks", "--url", url, "--token", TOKEN], transport=httpx.MockTransport(api))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --url: not a valid URL: {url!r}" in err.splitlines()[-1]
    assert why in err
    assert "Traceback" not in err
    assert api.requests == []


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://127.0.0.1:99999"], ids=["unclosed-ipv6", "port-too-high"]
)
def test_a_url_httpx_cannot_send_to_in_the_environment_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("TASKLEDGER_URL", url)
    api = Api(answer({"tasks": [], "next_cursor": None}))
    assert main(["tasks", "--token", TOKEN], transport=httpx.MockTransport(api)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"taskledger: TASKLEDGER_URL is not a valid URL: {url!r}")
    assert err.count("\n") == 1
    assert api.requests == []


@pytest.mark.parametrize(
    ("token", "why"),
    [("é", "must be printable ASCII"), ("tok\nen", "must be printable ASCII"), ("", "is empty")],
    ids=["non-ascii", "newline", "empty"],
)
def test_a_token_no_header_can_carry_is_refused_as_an_argument(
    capsys: pytest.CaptureFixture[str], token: str, why: str
) -> None:
    Path(".env").write_text("TASKLEDGER_ADMIN_TOKEN=admin-token-of-dotenv\n")
    api = Api(answer({"tasks": [], "next_cursor": None}))
    with pytest.raises(SystemExit) as exited:
        main(["tasks", "--url", URL, "--token", token], transport=httpx.MockTransport(api))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --token: {why}" in err.splitlines()[-1]
    assert "Traceback" not in err
    assert api.requests == []  # an empty --token never falls back to the admin token


def test_a_non_ascii_admin_token_in_the_environment_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKLEDGER_ADMIN_TOKEN", "tökén")
    api = Api(answer({"tasks": [], "next_cursor": None}))
    assert main(["tasks", "--url", URL], transport=httpx.MockTransport(api)) == 2
    assert capsys.readouterr().err == (
        "taskledger: TASKLEDGER_ADMIN_TOKEN must be printable ASCII,"
        " as the admin token and API keys are\n"
    )
    assert api.requests == []


def test_a_service_error_shows_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(answer({"error": "invalid", "message": "cursor is not one this API returned"}, 422))
    assert api.run("tasks") == 1
    assert capsys.readouterr().err == (
        "taskledger: the service answered 422: cursor is not one this API returned\n"
    )


def test_connection_refused_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["tasks", "--url", url, "--token", TOKEN]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"taskledger: cannot reach the service at {url}: ")
    assert err.count("\n") == 1


def test_a_missing_token_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(answer({}))
    assert main(["tasks", "--url", URL], transport=httpx.MockTransport(api)) == 2
    assert "TASKLEDGER_ADMIN_TOKEN" in capsys.readouterr().err
    assert api.requests == []


def test_url_and_token_come_from_the_env_file(capsys: pytest.CaptureFixture[str]) -> None:
    Path(".env").write_text("TASKLEDGER_ADMIN_TOKEN=from-dotenv\nTASKLEDGER_URL=http://env.test\n")
    api = Api(answer({"tasks": [], "next_cursor": None}))
    assert main(["tasks"], transport=httpx.MockTransport(api)) == 0
    assert api.requests[0].headers["authorization"] == "Bearer from-dotenv"
    assert api.requests[0].url.host == "env.test"


def test_the_default_url_is_the_local_service(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(answer({"tasks": [], "next_cursor": None}))
    assert main(["tasks", "--token", TOKEN], transport=httpx.MockTransport(api)) == 0
    assert str(api.requests[0].url).startswith("http://127.0.0.1:8000/v1/tasks")


def test_init_env_still_writes_the_env_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init-env"]) == 0
    written = Path(".env").read_text()
    assert "TASKLEDGER_ADMIN_TOKEN=" in written
    assert main(["init-env"]) == 0  # a second time: kept, and it says so
    assert Path(".env").read_text() == written
    assert ".env exists; kept as it is" in capsys.readouterr().out.splitlines()[-1]


# -- demo ------------------------------------------------------------------------


@pytest.mark.parametrize("count", ["-3", "0", "abc"])
def test_demo_refuses_a_task_count_below_one(count: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="whole number of tasks"):
        task_count(count)


def test_demo_run_refuses_a_negative_task_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(-3) == 2
    assert "--tasks must be a whole number of tasks" in capsys.readouterr().err


def test_demo_report_aligns_every_label_and_count() -> None:
    summary = {
        "by_state": {"failed": 29, "succeeded": 119},
        "recovered_by_poll": 39,
        "duplicates": 34,
        "conflicts": 0,
    }
    lines = format_report(summary, 24, 150, 150).splitlines()[1:]
    assert "  forged or bad callbacks refused   24" in lines
    ends = {len(line.split(" of ")[0].rstrip()) for line in lines}
    assert len(ends) == 1, lines  # every count ends in the same column
    assert lines[-1].endswith("150 of 150")


def test_an_error_answer_that_never_ends_is_read_only_as_far_as_its_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        for _ in range(100_000):  # 6.5 GB, were it read whole
            sent.append(1)
            yield b'{"message": "busy"}' + b" " * 65_536

    api = Api(lambda _request: httpx.Response(500, content=endless()))
    assert main(["tasks", "--token", TOKEN], transport=httpx.MockTransport(api)) != 0
    assert "the service answered 500" in capsys.readouterr().err
    assert len(sent) < 10


def test_a_filter_too_long_for_a_url_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(answer({"tasks": [], "next_cursor": None}))
    code = main(
        ["tasks", "--owner", "a" * 70_000, "--token", TOKEN], transport=httpx.MockTransport(api)
    )
    assert code != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("since", "why"),
    [
        ("0001-01-01T00:00:00+14:00", "not a time of years 1 to 9999 in UTC"),
        ("9999-12-31T23:59:59-14:00", "not a time of years 1 to 9999 in UTC"),
        ("yesterday", "not an ISO 8601 date or time"),
    ],
    ids=["before-year-1", "after-year-9999", "no-time"],
)
def test_a_refold_since_no_time_of_the_ledger_is_refused_as_an_argument(
    capsys: pytest.CaptureFixture[str], since: str, why: str
) -> None:
    """The ledger compares in UTC: a time that leaves years 1 to 9999 there is refused before
    anything opens the database (it had ended as a bare "database error")."""
    with pytest.raises(SystemExit) as exited:
        main(["db", "refold", "--since", since, "--dry-run"])
    assert exited.value.code == 2
    assert f"argument --since: {why}: {since!r}" in capsys.readouterr().err.splitlines()[-1]
