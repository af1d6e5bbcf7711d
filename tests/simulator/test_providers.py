"""Provider routes over real HTTP: lifecycles, errors, auth, listing."""

from __future__ import annotations

import pytest

from simulator import Faults, Lifecycle
from tests.simulator.support import (
    AUTH,
    STATUS_PATHS,
    SUBMITS,
    Receiver,
    make_config,
    running,
    truth_of,
)

FORMAT_IDS = ["openai", "apidot", "evolink"]
SUCCEEDING = Lifecycle(min_duration_s=0.05, max_duration_s=0.1, failed_weight=0, cancelled_weight=0)
RIGHT_KEY = {"authorization": "Bearer sk-right"}
LIFECYCLE_WORDS = {
    "openai": ["queued", "in_progress", "completed|failed"],
    "apidot": ["not_started", "running", "finished|failed"],
    "evolink": ["pending", "processing", "completed|failed"],
}


def status_word(fmt: str, body: dict[str, object]) -> str:
    data = body["data"] if fmt == "apidot" else body
    assert isinstance(data, dict)
    return str(data["status"])


def rank(fmt: str, word: str) -> int:
    return next(i for i, words in enumerate(LIFECYCLE_WORDS[fmt]) if word in words.split("|"))


@pytest.mark.parametrize("fmt", FORMAT_IDS)
async def test_status_moves_forward_to_the_final_state_of_ground_truth(
    fmt: str, receiver: Receiver
) -> None:
    async with running(make_config(receiver)) as run:
        task_id = await run.submit(fmt, f"{receiver.url}/callbacks/{fmt}/token")
        seen = [status_word(fmt, body) for body in await run.wait_terminal(fmt, task_id)]
        truth = truth_of(run.sim, task_id)
    ranks = [rank(fmt, word) for word in seen]
    assert ranks == sorted(ranks)
    assert seen[-1] == truth["final_state"]


@pytest.mark.parametrize("fmt", FORMAT_IDS)
async def test_submit_answers_the_queued_state(fmt: str) -> None:
    async with running(make_config()) as run:
        path, body = SUBMITS[fmt]
        response = await run.client.post(path, json=body("http://127.0.0.1:9/cb/token"))
    assert response.status_code == 200
    assert status_word(fmt, response.json()) == LIFECYCLE_WORDS[fmt][0]


async def test_cancelled_evolink_task_reads_failed_with_request_cancelled() -> None:
    lifecycle = Lifecycle(
        min_duration_s=0.05, max_duration_s=0.1, succeeded_weight=0, failed_weight=0
    )
    async with running(make_config(lifecycle=lifecycle)) as run:
        task_id = await run.submit("evolink")
        final = (await run.wait_terminal("evolink", task_id))[-1]
    assert final["status"] == "failed"
    assert final["error"]["code"] == "request_cancelled"


@pytest.mark.parametrize("fmt", FORMAT_IDS)
async def test_unknown_task_answers_404_with_a_json_error(fmt: str) -> None:
    async with running(make_config()) as run:
        response = await run.status(fmt, "task-unified-0-nothing")
    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.parametrize("fmt", FORMAT_IDS)
async def test_request_without_bearer_key_answers_401(fmt: str) -> None:
    async with running(make_config()) as run:
        path, body = SUBMITS[fmt]
        response = await run.client.post(path, json=body(None), headers={"authorization": ""})
    assert response.status_code == 401


async def test_configured_api_key_must_match() -> None:
    async with running(make_config(api_key="sk-right")) as run:
        wrong = await run.client.get("/openai/v1/videos")
        right = await run.client.get(
            "/openai/v1/videos", headers={"authorization": "Bearer sk-right"}
        )
    assert (wrong.status_code, right.status_code) == (401, 200)


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        ("openai", {"model": "sora-2", "prompt": "x", "seconds": "5"}),
        ("apidot", {"model": "sora-2-official", "input": {}}),
        ("evolink", {"model": "sora-2", "prompt": "x", "callback_url": "ftp://x/y"}),
    ],
    ids=["openai-bad-seconds", "apidot-no-prompt", "evolink-bad-callback-url"],
)
async def test_invalid_submit_answers_400(fmt: str, body: dict[str, object]) -> None:
    async with running(make_config()) as run:
        response = await run.client.post(SUBMITS[fmt][0], json=body)
    assert response.status_code == 400


async def test_openai_list_pages_newest_first_with_a_cursor() -> None:
    async with running(make_config()) as run:
        ids = [await run.submit("openai") for _ in range(3)]
        first = (await run.client.get("/openai/v1/videos", params={"limit": 2})).json()
        rest = (
            await run.client.get("/openai/v1/videos", params={"after": first["last_id"]})
        ).json()
    assert [video["id"] for video in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    assert [video["id"] for video in rest["data"]] == ids[:1]
    assert rest["has_more"] is False


async def test_openai_content_is_served_once_the_video_completed() -> None:
    lifecycle = Lifecycle(
        min_duration_s=0.05, max_duration_s=0.1, failed_weight=0, cancelled_weight=0
    )
    async with running(make_config(lifecycle=lifecycle)) as run:
        task_id = await run.submit("openai")
        await run.wait_terminal("openai", task_id)
        response = await run.client.get(f"/openai/v1/videos/{task_id}/content")
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"


@pytest.mark.parametrize("fmt", FORMAT_IDS)
async def test_down_switch_answers_503_to_submits_and_polls(fmt: str) -> None:
    async with running(make_config(faults=Faults(down=True))) as run:
        path, body = SUBMITS[fmt]
        submit = await run.client.post(path, json=body(None))
        poll = await run.client.get(STATUS_PATHS[fmt].format("any"), headers=AUTH)
    assert (submit.status_code, poll.status_code) == (503, 503)


async def test_apidot_files_move_under_output_when_configured() -> None:
    lifecycle = Lifecycle(
        min_duration_s=0.05, max_duration_s=0.1, failed_weight=0, cancelled_weight=0
    )
    config = make_config(lifecycle=lifecycle, apidot_files_under_output=True)
    async with running(config) as run:
        task_id = await run.submit("apidot")
        final = (await run.wait_terminal("apidot", task_id))[-1]
    assert final["data"]["output"]["files"][0]["file_type"] == "video"
    assert "files" not in final["data"]
