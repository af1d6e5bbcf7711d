"""Authenticated means kept: whatever an authenticated body holds, it is stored and
answered 2xx; the only refusals are authentication, another task's body, and transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from receiver.callbacks import kept_headers
from tests.conftest import FakeClock
from tests.support.senders import apidot_body, openai_event, signed_headers
from tests.support.service import Service, running_service, settings_for

JSON = {"content-type": "application/json"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


def _deliveries(task: dict[str, Any]) -> list[dict[str, Any]]:
    return list(task["timeline"]["deliveries"])


async def _metric(service: Service, name: str) -> str:
    text = (await service.http.get("/metrics")).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


UNREADABLE = [
    (b"{not json", {"content-type": "application/json"}, "not_json"),
    (b"status=finished", {"content-type": "text/plain"}, "not_json"),
    (b"[1, 2]", JSON, "not_object"),
    (b"\xff\xfe\x00", JSON, "not_json"),
    (b"", JSON, "not_json"),
    (b'{"code": 200}', JSON, "bad_field"),
    (b'{"data": {"status": 1}}', JSON, "bad_field"),
]


async def _unrecognized(service: Service, reason: str) -> float:
    """How many of apidot's callbacks were kept unrecognized for `reason`."""
    series = f'taskledger_unrecognized_deliveries_total{{provider="apidot",reason="{reason}"}}'
    lines = (await _metric(service, series)).splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(series + " "))


async def test_unreadable_token_callback_is_kept_raw_and_answered_200(
    service: Service, subtests: pytest.Subtests
) -> None:
    """Each unreadable body on a task of its own, one service for them all."""
    ids = ["broken", "form", "array", "not-utf8", "empty", "no-data", "wrong-types"]
    for case, (body, headers, reason) in zip(ids, UNREADABLE, strict=True):
        with subtests.test(case=case):
            ref, path = await service.task_with_callback("apidot", provider_task_id=f"t-{case}")
            counted = await _unrecognized(service, reason)
            response = await service.http.post(path, content=body, headers=headers)
            assert response.status_code == 200, response.text
            assert response.json() == {"outcome": "unrecognized"}
            task = await service.task(ref)
            (kept,) = _deliveries(task)
            assert kept["outcome"] == "unrecognized"
            assert kept["reason"]
            assert task["state"] == "submitted"  # kept, not folded in
            assert await _unrecognized(service, reason) == counted + 1


async def test_unknown_status_word_is_kept_and_the_task_polled_at_once(
    service: Service, clock: FakeClock
) -> None:
    ref, path = await service.task_with_callback("apidot", provider_task_id="task-x")
    response = await service.http.post(path, content=apidot_body("task-x", "exploded"))
    assert response.json() == {"outcome": "unrecognized"}
    task = await service.task(ref)
    (kept,) = _deliveries(task)
    assert "exploded" in kept["reason"]
    assert task["next_poll_at"] == clock().isoformat()


async def test_apidot_result_url_that_is_not_http_is_kept_unrecognized(service: Service) -> None:
    """A finished callback whose file URL is `javascript:` is kept raw, and the task gets no
    result from it."""
    ref, path = await service.task_with_callback("apidot", provider_task_id="task-js")
    file = {"file_url": "javascript:alert(1)", "file_type": "video"}
    data = {"task_id": "task-js", "status": "finished", "progress": 100, "files": [file]}
    counted = await _unrecognized(service, "bad_field")
    response = await service.http.post(path, content=orjson.dumps({"code": 200, "data": data}))
    assert response.status_code == 200
    assert response.json() == {"outcome": "unrecognized"}
    assert await _unrecognized(service, "bad_field") == counted + 1
    task = await service.task(ref)
    (kept,) = _deliveries(task)
    assert "must be an http(s) URL" in kept["reason"]
    assert (task["state"], task["result"]) == ("submitted", None)


async def test_a_resent_unreadable_callback_is_stored_once_and_counted(service: Service) -> None:
    ref, path = await service.task_with_callback("apidot", provider_task_id="task-x")
    for _ in range(3):
        response = await service.http.post(path, content=b"{not json", headers=JSON)
    assert response.json() == {"outcome": "duplicate"}
    (kept,) = _deliveries(await service.task(ref))
    assert kept["duplicate_count"] == 2


async def test_a_body_naming_no_task_sent_to_several_tasks_is_kept_by_each(
    service: Service, clock: FakeClock, subtests: pytest.Subtests
) -> None:
    """Bodies that name no task id are alike across tasks (empty, unreadable, a bare
    status): each task's is its own delivery, kept and polled for, not another's resend."""
    bodies = {
        "unreadable": b"{not json",
        "empty": b"",
        "no task id": orjson.dumps({"code": 200, "data": {"status": "finished"}}),
    }
    for case, body in bodies.items():
        with subtests.test(case=case):
            tasks = [
                await service.task_with_callback("apidot", provider_task_id=f"{case}-{i}")
                for i in range(3)
            ]
            answers = await asyncio.gather(
                *(service.http.post(path, content=body, headers=JSON) for _, path in tasks)
            )
            assert [a.json() for a in answers] == [{"outcome": "unrecognized"}] * 3
            for ref, _ in tasks:
                task = await service.task(ref)
                (kept,) = _deliveries(task)
                assert (kept["outcome"], kept["duplicate_count"]) == ("unrecognized", 0)
                assert task["next_poll_at"] == clock().isoformat()
            # A resend to the same task is still that task's duplicate.
            again = await service.http.post(tasks[0][1], content=body, headers=JSON)
            assert again.json() == {"outcome": "duplicate"}


async def test_unreadable_callback_before_the_task_id_is_known_is_its_tokens(
    service: Service,
) -> None:
    ref, path = await service.task_with_callback("apidot")
    response = await service.http.post(path, content=b"<html>oops</html>", headers=JSON)
    assert response.json() == {"outcome": "unrecognized"}
    (kept,) = _deliveries(await service.task(ref))
    assert kept["task_ref"] == ref


async def _ignored(service: Service) -> int:
    audit = (await service.http.get("/v1/audit", headers=service.admin)).json()
    (openai,) = [p for p in audit["providers"] if p["provider"] == "openai"]
    return int(openai["ignored"])


async def test_openai_events_about_no_video_are_acknowledged_and_kept_as_ignored(
    service: Service, clock: FakeClock, subtests: pytest.Subtests
) -> None:
    kinds = ["response.completed", "batch.failed", "fine_tuning.job.succeeded", "eval.run.failed"]
    for n, kind in enumerate(kinds):
        with subtests.test(kind=kind):
            body = openai_event(f"resp_{n}", kind=kind)
            response = await service.http.post(
                "/webhooks/openai", content=body, headers=signed_headers(body, clock())
            )
            assert response.status_code == 200
            assert response.json() == {"outcome": "ignored"}
            assert await _ignored(service) == n + 1


async def test_unknown_video_event_for_a_known_video_is_kept_and_shown(
    service: Service, clock: FakeClock
) -> None:
    task = await service.register("openai", provider_task_id="video_9")
    body = openai_event("video_9", kind="video.remixed")
    response = await service.http.post(
        "/webhooks/openai", content=body, headers=signed_headers(body, clock())
    )
    assert response.json() == {"outcome": "unrecognized"}
    (kept,) = _deliveries(await service.task(task["ref"]))
    assert kept["outcome"] == "unrecognized"
    audit = (await service.http.get("/v1/audit", headers=service.admin)).json()
    (openai,) = [p for p in audit["providers"] if p["provider"] == "openai"]
    assert openai["unrecognized"] == 1


async def test_signed_body_that_is_not_json_is_kept_unmatched(
    service: Service, clock: FakeClock
) -> None:
    body = b"not json at all"
    response = await service.http.post(
        "/webhooks/openai", content=body, headers=signed_headers(body, clock())
    )
    assert response.status_code == 200
    assert response.json() == {"outcome": "unrecognized"}


async def test_body_naming_another_task_is_403_before_the_token_task_has_an_id(
    service: Service,
) -> None:
    await service.register("apidot", provider_task_id="task-b")
    ref, path = await service.task_with_callback("apidot")
    response = await service.http.post(path, content=apidot_body("task-b", "finished"))
    assert response.status_code == 403
    task = await service.task(ref)
    assert task["provider_task_id"] is None
    assert _deliveries(task) == []


async def test_resending_another_tasks_stored_body_is_403_and_counts_nothing(
    service: Service,
) -> None:
    ref_b, path_b = await service.task_with_callback("apidot", provider_task_id="task-b")
    ref_a, path_a = await service.task_with_callback("apidot", provider_task_id="task-a")
    body = apidot_body("task-b", "running", 40)
    assert (await service.http.post(path_b, content=body)).status_code == 200
    response = await service.http.post(path_a, content=body)
    assert response.status_code == 403
    (stored,) = _deliveries(await service.task(ref_b))
    assert stored["duplicate_count"] == 0
    assert _deliveries(await service.task(ref_a)) == []


async def test_registering_with_a_task_id_folds_in_its_unmatched_events(
    service: Service, clock: FakeClock
) -> None:
    body = openai_event("video_early", kind="video.completed")
    response = await service.http.post(
        "/webhooks/openai", content=body, headers=signed_headers(body, clock())
    )
    assert response.status_code == 202
    task = await service.register("openai", provider_task_id="video_early")
    assert task["state"] == "succeeded"
    (delivery,) = _deliveries(await service.task(task["ref"]))
    assert delivery["task_ref"] == task["ref"]
    assert delivery["outcome"] == "applied"


async def test_burst_of_valid_callbacks_with_foreign_bodies_mixed_in_all_stored(
    service: Service,
) -> None:
    """Bodies naming another task inside a burst fail alone: every valid one is 2xx."""
    await service.register("apidot", provider_task_id="task-victim")
    valid = [
        await service.task_with_callback("apidot", provider_task_id=f"t-{n}") for n in range(24)
    ]
    hostile = [await service.task_with_callback("apidot") for _ in range(4)]
    sends = [
        service.http.post(path, content=apidot_body(f"t-{n}", "running", 10))
        for n, (_, path) in enumerate(valid)
    ] + [
        service.http.post(path, content=apidot_body("task-victim", "finished"))
        for _, path in hostile
    ]
    answers = await asyncio.gather(*sends)
    assert [a.status_code for a in answers[:24]] == [200] * 24
    assert [a.status_code for a in answers[24:]] == [403] * 4
    for ref, _ in valid:
        assert (await service.task(ref))["state"] == "running"
    for ref, _ in hostile:
        assert (await service.task(ref))["provider_task_id"] is None


async def test_answer_body_is_json_with_the_outcome(service: Service) -> None:
    _, path = await service.task_with_callback("apidot", provider_task_id="task-x")
    response = await service.http.post(path, content=apidot_body("task-x", "running", 5))
    assert orjson.loads(response.content) == {"outcome": "applied"}


def test_kept_headers_name_the_sender_and_never_keep_a_signature() -> None:
    raw = [
        (b"x-fal-webhook-request-id", b"req-1"),
        (b"x-fal-webhook-timestamp", b"1765000000"),
        (b"x-fal-webhook-signature", b"ab" * 64),
        (b"webhook-signature", b"v1,xyz"),
        (b"x-webhook-signature", b"c2ln"),
        (b"authorization", b"Bearer secret"),
    ]
    assert kept_headers(raw) == {
        "x-fal-webhook-request-id": "req-1",
        "x-fal-webhook-timestamp": "1765000000",
    }
