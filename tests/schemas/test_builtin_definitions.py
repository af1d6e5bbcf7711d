"""The built-in definitions (schemas/providers/): what Replicate, fal and kie are sent, where
they are asked, and the format's parts they needed (`[submit] model/extra`, `body = "bare"`,
`{model}`/`{app}` paths, `[result]`, rules on a field)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas import ledger
from schemas.definition import Definition, load_definition
from schemas.errors import ConfigError, WireFormatError
from schemas.ledger import NOT_READ_AS_JSON, Reader, parse_payload, read_payload
from schemas.settings import BUILTIN_PROVIDERS_DIR, builtin_definitions
from schemas.states import State
from schemas.wire import (
    WireFormat,
    build_submit_body,
    normalize_callback,
    normalize_result,
    normalize_status,
    parse_submit_response,
    result_path,
    status_path,
    submit_path,
    task_id_hint,
)

FAL_MODEL = "fal-ai/veo3/fast"
REQUEST_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"


def kind(name: str) -> Definition:
    return builtin_definitions()[name]


def test_replicate_is_sent_its_version_input_webhook_and_events_filter() -> None:
    body = build_submit_body(
        kind("replicate"), "owner/name:abc", {"prompt": "a cat"}, "https://us/webhooks/replicate"
    )
    assert body == {
        "version": "owner/name:abc",
        "input": {"prompt": "a cat"},
        "webhook": "https://us/webhooks/replicate",
        "webhook_events_filter": ["start", "completed"],
    }


def test_fal_is_sent_the_bare_input_to_its_model_with_the_webhook_in_the_query() -> None:
    fal = kind("fal")
    assert build_submit_body(fal, FAL_MODEL, {"prompt": "a cat"}, "https://us/cb") == {
        "prompt": "a cat"
    }
    assert submit_path(fal, "https://us/cb/t", FAL_MODEL) == (
        "/fal-ai/veo3/fast?fal_webhook=https%3A%2F%2Fus%2Fcb%2Ft"
    )


def test_fal_status_and_result_paths_name_the_app_without_its_subpath() -> None:
    fal = kind("fal")
    assert status_path(fal, REQUEST_ID, FAL_MODEL) == f"/fal-ai/veo3/requests/{REQUEST_ID}/status"
    assert result_path(fal, REQUEST_ID, FAL_MODEL) == f"/fal-ai/veo3/requests/{REQUEST_ID}"


def test_a_path_that_names_the_model_refuses_a_task_without_one() -> None:
    with pytest.raises(WireFormatError, match="needs the task's model"):
        status_path(kind("fal"), REQUEST_ID, "")


def test_kie_status_path_carries_the_task_id_in_its_query() -> None:
    assert status_path(kind("kie"), "task_1") == "/api/v1/jobs/recordInfo?taskId=task_1"


def test_a_fal_result_answered_with_an_unlisted_refusal_is_not_a_failure() -> None:
    with pytest.raises(WireFormatError, match="HTTP 404"):
        normalize_result(kind("fal"), REQUEST_ID, 404, {"detail": "Not found"})


def test_a_fal_webhook_whose_payload_could_not_be_sent_asks_for_the_result() -> None:
    body = {"request_id": REQUEST_ID, "status": "OK", "payload": None, "payload_error": "big"}
    seen = normalize_callback(kind("fal"), body)
    assert (seen.state, seen.needs_fetch) == (State.RUNNING, True)


def test_a_result_path_may_name_only_known_placeholders(tmp_path: Path) -> None:
    text = (BUILTIN_PROVIDERS_DIR / "fal.toml").read_text(encoding="utf-8")
    broken = tmp_path / "fal2.toml"
    broken.write_text(text.replace('"/{app}/requests/{task_id}"', '"/{owner}/{task_id}"'))
    with pytest.raises(ConfigError, match=r"result.path` names \{owner\}"):
        load_definition(broken)


# Replicate's `output` is whatever the model's schema says: a URL, a list of them, text,
# tokens, or an object of named files (https://replicate.com/docs/reference/http, "output").
@pytest.mark.parametrize(
    ("output", "urls"),
    [
        ("https://replicate.delivery/a.mp4", ["https://replicate.delivery/a.mp4"]),
        (["https://replicate.delivery/a.png", "https://replicate.delivery/b.png"], None),
        ("hello Alice", []),
        (["Hello", " world", "!"], []),
        (
            {"video": "https://replicate.delivery/v.mp4", "thumbnail": "HTTPS://x.example/t.jpg"},
            ["https://replicate.delivery/v.mp4", "HTTPS://x.example/t.jpg"],
        ),
        ([["https://replicate.delivery/n.png"]], ["https://replicate.delivery/n.png"]),
        ({"files": [{"url": "ftp://x.example/f"}, {"url": "data:video/mp4;base64,AAAA"}]}, []),
        ([[[["https://deep.example/x.png"]]]], ["https://deep.example/x.png"]),
        ([[[[["https://too.deep.example/x.png"]]]]], []),
    ],
)
def test_replicate_result_urls_are_the_web_urls_of_its_output(output: object, urls: object) -> None:
    body = {"id": "p1", "status": "succeeded", "output": output}
    seen = normalize_callback(kind("replicate"), body)
    assert seen.state is State.SUCCEEDED
    assert list(seen.result_urls) == (output if urls is None else urls)


def test_a_fal_request_error_is_the_requests_failure_whatever_its_status() -> None:
    body = {"detail": "Runner disconnected", "error_type": "runner_disconnected"}
    seen = normalize_result(kind("fal"), REQUEST_ID, 503, body)
    assert (seen.state, seen.error_code, seen.error_message) == (
        State.FAILED,
        "runner_disconnected",
        "Runner disconnected",
    )
    with pytest.raises(WireFormatError):
        normalize_result(kind("fal"), REQUEST_ID, 503, {"detail": "no healthy upstream"})


def test_a_kie_failure_callback_reads_as_failed_and_names_its_task() -> None:
    body = {
        "code": 501,
        "msg": "Generation Failed",
        "data": {"taskId": "t-1", "state": "fail", "failCode": "501", "failMsg": "boom"},
    }
    seen = normalize_callback(kind("kie"), body)
    assert (seen.provider_task_id, seen.state, seen.error_message) == ("t-1", State.FAILED, "boom")
    # With no state the envelope's refusal stands (kept unread, its task still known).
    with pytest.raises(WireFormatError) as caught:
        normalize_callback(kind("kie"), {"code": 501, "msg": "no", "data": {"taskId": "t-1"}})
    assert caught.value.reason == "provider_error"
    assert task_id_hint(kind("kie"), {"code": 501, "data": {"taskId": "t-1"}}) == "t-1"


def test_a_kie_failure_polled_reads_as_failed_as_its_callback_does() -> None:
    """kie's task-detail page answers a failed task with code 501 (or 422) in its envelope
    and `state: "fail"`: the task's outcome, not an error of the poll, which retried would
    never end."""
    body = {
        "code": 501,
        "msg": "Generation failed",
        "data": {"taskId": "t-1", "state": "fail", "failCode": "501", "failMsg": "policy"},
    }
    for asked in ("t-1", None):
        seen = normalize_status(kind("kie"), body, task_id=asked)
        assert (seen.provider_task_id, seen.state, seen.error_code, seen.error_message) == (
            "t-1",
            State.FAILED,
            "501",
            "policy",
        )
    # An envelope's code on a body whose task names no status is the endpoint's refusal.
    for refused in ({"code": 404, "msg": "task not found", "data": None}, {"code": 429}):
        with pytest.raises(WireFormatError) as caught:
            normalize_status(kind("kie"), refused, task_id="t-1")
        assert caught.value.reason == "provider_error"


def test_a_submit_answer_refused_by_its_envelope_stays_refused_whatever_it_names() -> None:
    """A submit answer read as a status body: a code other than success refuses our
    request, even beside a status word (no task was made to have one)."""
    body = {"code": 402, "message": "insufficient_credits", "data": {"status": "failed"}}
    with pytest.raises(WireFormatError) as caught:
        parse_submit_response(WireFormat.APIDOT, body)
    assert caught.value.reason == "provider_error"


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"code": 1' + b"0" * 400 + b"}", b"[" * 2000 + b"]" * 2000, b'{"a": "\\ud800"}'],
    ids=["invalid", "big-integer", "deep", "lone-surrogate"],
)
def test_a_body_not_read_as_json_says_why_it_may_be_so(body: bytes) -> None:
    reading = read_payload(Reader(kind("fal")), parse_payload(body), datetime.now(UTC))
    assert reading.unread is not None
    assert (reading.unread.reason, reading.unread.detail) == ("not_json", NOT_READ_AS_JSON)


@pytest.mark.parametrize(
    "payload",
    [
        {"image": {"url": "https://fal.example/a.png", "content_type": "image/png"}},
        {"audio_file": {"url": "https://fal.example/a.wav"}, "seed": 7},
        {"model_mesh": {"url": "https://fal.example/a.glb"}, "timings": {"inference": 1.5}},
        {"images": [{"file": {"url": "https://fal.example/a.png"}}]},
    ],
    ids=["image", "audio_file", "model_mesh", "nested"],
)
def test_a_fal_outputs_urls_are_results_whatever_the_models_keys(payload: object) -> None:
    body = {"request_id": REQUEST_ID, "status": "OK", "payload": payload}
    webhook = normalize_callback(kind("fal"), body)
    fetched = normalize_result(kind("fal"), REQUEST_ID, 200, payload)
    assert webhook.state is fetched.state is State.SUCCEEDED
    assert len(webhook.result_urls) == 1
    assert webhook.result_urls == fetched.result_urls
    assert webhook.result_urls[0].startswith("https://fal.example/a.")


def test_a_failed_tasks_body_has_no_results_though_it_holds_urls() -> None:
    detail = [
        {"msg": "flagged", "type": "content_policy_violation", "url": "https://docs.fal.ai/e"}
    ]
    body = {"request_id": REQUEST_ID, "status": "ERROR", "payload": {"detail": detail}}
    seen = normalize_callback(kind("fal"), body)
    assert (seen.state, seen.result_urls, seen.error_code) == (
        State.FAILED,
        (),
        "content_policy_violation",
    )


def test_a_kie_result_sent_as_an_object_rather_than_json_text_is_read() -> None:
    urls = ["https://tempfile.example/v.mp4"]
    for result in ({"resultUrls": urls}, '{"resultUrls": ["https://tempfile.example/v.mp4"]}'):
        body = {"code": 200, "data": {"taskId": "t-1", "state": "success", "resultJson": result}}
        assert normalize_callback(kind("kie"), body).result_urls == tuple(urls)


def test_a_replicate_error_given_as_an_object_is_kept_as_its_json() -> None:
    error = {"code": "E_OOM", "detail": "CUDA out of memory"}
    body = {"id": "p1", "status": "failed", "error": error}
    seen = normalize_callback(kind("replicate"), body)
    assert seen.state is State.FAILED
    assert seen.error_message == '{"code":"E_OOM","detail":"CUDA out of memory"}'


def test_an_error_object_nested_past_what_json_writers_take_is_no_message() -> None:
    error: object = "deep"
    for _ in range(300):  # orjson reads 1,024 levels, writes 255
        error = {"e": error}
    body = {"id": "p1", "status": "failed", "error": error}
    seen = normalize_callback(kind("replicate"), body)
    assert (seen.state, seen.error_message) == (State.FAILED, None)


def test_a_reader_that_fails_on_a_body_leaves_it_kept_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RecursionError("a reader's own bug")

    monkeypatch.setattr(ledger, "normalize_callback", broken)
    reading = read_payload(Reader(kind("fal")), {"request_id": "r-1"}, datetime.now(UTC))
    assert (reading.observation, reading.task_id) == (None, "")
    assert reading.unread is not None
    assert reading.unread.reason == "reader_failed"
    assert "RecursionError" in reading.unread.detail


def test_a_body_after_a_utf8_byte_order_mark_is_read() -> None:
    body = b'\xef\xbb\xbf{"request_id": "r-1", "status": "IN_PROGRESS"}'
    reading = read_payload(Reader(kind("fal")), parse_payload(body), datetime.now(UTC))
    assert reading.unread is None
    assert reading.observation is not None
    assert (reading.task_id, reading.observation.state) == ("r-1", State.RUNNING)
