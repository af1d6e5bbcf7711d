"""A wire format read from a definition file: the invented MovieMint gateway, no code."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.definition import load_definition
from schemas.errors import WireFormatError
from schemas.states import State
from schemas.wire import (
    build_submit_body,
    normalize_callback,
    normalize_status,
    parse_submit_response,
    status_path,
    submit_path,
    task_id_hint,
)

HERE = Path(__file__).parent / "definitions"
MINT = load_definition(HERE / "moviemint.toml")
STILL = load_definition(HERE / "stillpoll.toml")
NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def render(phase: str, **result: object) -> dict[str, object]:
    return {"ok_code": 0, "result": {"render_id": "r-1", "phase": phase, **result}}


def test_each_status_word_reads_as_our_state() -> None:
    words = {"waiting": State.QUEUED, "Rendering": State.RUNNING, "broken": State.FAILED}
    for word, state in words.items():
        assert normalize_status(MINT, render(word)).state is state


def test_a_delivered_render_keeps_its_urls_cost_and_expiry() -> None:
    body = render(
        "delivered",
        percent=100,
        outputs=[{"href": "https://cdn.example/r-1.mp4"}, {"href": "https://cdn.example/r-1.jpg"}],
        billing={"tokens": 42},
        done_at="2026-12-06T09:00:00Z",
    )
    seen = normalize_callback(MINT, body, result_ttl_seconds=MINT.result_ttl_seconds, now=NOW)
    assert seen.provider_task_id == "r-1"
    assert (seen.state, seen.progress) == (State.SUCCEEDED, 100)
    assert seen.result_urls == ("https://cdn.example/r-1.mp4", "https://cdn.example/r-1.jpg")
    assert seen.extra == {"cost_credits": 42, "expires_at": "2026-12-06T11:00:00+00:00"}


def test_a_failure_keeps_its_code_and_message() -> None:
    body = render("broken", failure={"kind": "policy", "detail": "refused by the filter"})
    seen = normalize_status(MINT, body)
    assert (seen.error_code, seen.error_message) == ("policy", "refused by the filter")


def test_an_unknown_word_is_unknown_status_with_the_task_id_still_readable() -> None:
    with pytest.raises(WireFormatError) as caught:
        normalize_status(MINT, render("teleporting"))
    assert caught.value.reason == "unknown_status"
    assert task_id_hint(MINT, render("teleporting")) == "r-1"


def test_an_envelope_saying_failure_is_a_provider_error() -> None:
    with pytest.raises(WireFormatError) as caught:
        normalize_status(MINT, {"ok_code": 7, "error_text": "quota exceeded"})
    assert caught.value.reason == "provider_error"
    assert "quota exceeded" in str(caught.value)


def test_submit_nests_the_request_and_puts_the_callback_in_its_field() -> None:
    body = build_submit_body(MINT, "mint-1", {"prompt": "a fox", "model": "x"}, "https://cb")
    assert body == {"model": "mint-1", "input": {"prompt": "a fox"}, "notify_url": "https://cb"}
    assert submit_path(MINT) == "/api/v2/renders"
    assert status_path(MINT, "r/1") == "/api/v2/renders/r%2F1"


def test_a_submit_answer_without_a_status_is_queued() -> None:
    seen = parse_submit_response(MINT, {"ok_code": 0, "result": {"render_id": "r-9"}})
    assert (seen.provider_task_id, seen.state) == ("r-9", State.QUEUED)


def test_a_poll_only_provider_reads_upper_case_words() -> None:
    artifact = "https://cdn.example/j-1.png"
    seen = normalize_status(STILL, {"job": {"id": "j-1", "state": "DONE", "artifacts": [artifact]}})
    assert (seen.state, seen.result_urls) == (State.SUCCEEDED, (artifact,))
    assert build_submit_body(STILL, "m", {"prompt": "p"}, None) == {"model": "m", "prompt": "p"}


def test_a_callback_url_can_travel_as_a_query_parameter(tmp_path: Path) -> None:
    path = tmp_path / "queue.toml"
    text = (
        (HERE / "stillpoll.toml")
        .read_text()
        .replace('callback = "none"', 'callback = "query:hook"')
    )
    path.write_text(text.replace('name = "stillpoll"', 'name = "queue"'))
    queue = load_definition(path)
    assert submit_path(queue, "https://us/cb?x=1") == "/jobs?hook=https%3A%2F%2Fus%2Fcb%3Fx%3D1"
    assert submit_path(queue, None) == "/jobs"
    assert "hook" not in build_submit_body(queue, "m", {}, "https://us/cb")
