"""The console's checks of what the admin API answers: a 2xx from another service at --url
is one line and exit 1, never printed as if taskledger had answered it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ops.cli import main
from tests.ops.test_console import CONNECTION, URL, Handler

HTML = b"<!doctype html><html><body>Welcome to nginx!</body></html>"
NOT_TASKLEDGER = (
    f"taskledger: the service at {URL} answered 200 with something that is not"
    " taskledger's answer ("
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `.env` of the repository and no admin token from the caller's environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKLEDGER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("TASKLEDGER_URL", raising=False)


def html(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=HTML, headers={"content-type": "text/html"})


def json_answer(body: object) -> Handler:
    return lambda request: httpx.Response(200, json=body)


def empty(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200)


def run(handler: Handler, *argv: str) -> int:
    return main([*argv, *CONNECTION], transport=httpx.MockTransport(handler))


def assert_refused_in_one_line(capsys: pytest.CaptureFixture[str], why: str) -> None:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(NOT_TASKLEDGER), captured.err
    assert why in captured.err
    assert captured.err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "handler", "why"),
    [
        (("tasks",), html, "text/html that is not JSON"),
        (("show", "tl_x"), json_answer({}), "without ref, provider, state"),
        (("audit",), json_answer([]), "JSON list, not an object"),
        (("changes",), json_answer({"ok": True}), "without changes, last_seq"),
        (("keys", "create", "ci", "--scope", "read"), json_answer({"ok": True}), "without id"),
        (("keys", "list"), json_answer({}), "without keys"),
        (("keys", "revoke", "key_x"), json_answer({}), "without id, name"),
        (("keys", "revoke", "key_x"), empty, "an empty body"),
        (("endpoints", "delete", "ep_x"), json_answer({}), "not the 204 No Content"),
        (("endpoints", "delete", "ep_x"), empty, "not the 204 No Content"),
        (("endpoints", "show", "ep_x"), json_answer({"id": "ep_x"}), "without url, enabled"),
        (("endpoints", "list"), html, "not JSON"),
        (("notify", "retry", "msg_x"), json_answer({}), "without requeued"),
        (("notify", "retry", "msg_x"), empty, "an empty body"),
    ],
    ids=[
        "tasks-html",
        "show-empty-object",
        "audit-list",
        "changes-wrong-object",
        "keys-create-no-key",
        "keys-list-empty-object",
        "keys-revoke-empty-object",
        "keys-revoke-empty-body",
        "endpoints-delete-json",
        "endpoints-delete-200-empty",
        "endpoints-show-partial",
        "endpoints-list-html",
        "notify-retry-empty-object",
        "notify-retry-empty-body",
    ],
)
def test_an_answer_of_the_wrong_shape_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], handler: Handler, why: str
) -> None:
    assert run(handler, *argv) == 1
    assert_refused_in_one_line(capsys, why)


def test_export_of_html_prints_none_of_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(html, "export", "--format", "jsonl") == 1
    assert_refused_in_one_line(capsys, "text/html, not application/x-ndjson")


def test_export_of_html_to_a_file_writes_no_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "tasks.csv"
    assert run(html, "export", "--format", "csv", "-o", str(target)) == 1
    assert_refused_in_one_line(capsys, "text/html, not text/csv")
    assert list(tmp_path.iterdir()) == []


def test_export_of_the_other_format_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    def jsonl(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "application/x-ndjson"}
        return httpx.Response(200, content=b'{"ref":"tl_1"}\n', headers=headers)

    assert run(jsonl, "export", "--format", "csv") == 1
    assert_refused_in_one_line(capsys, "application/x-ndjson, not text/csv")


def test_delete_answered_204_says_it_deleted(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(lambda request: httpx.Response(204), "endpoints", "delete", "ep_x") == 0
    assert capsys.readouterr().out == "taskledger: deleted endpoint ep_x\n"
