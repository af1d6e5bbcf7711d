"""The providers' tricks (unknown words, foreign events, spellings, envelopes, wrong ids) and
the log of what was sent and how each attempt was answered."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from simulator import Faults, Lifecycle
from simulator.lifecycle import Schedule, SimTask
from simulator.tricks import CANCEL_SPELLINGS, NON_VIDEO_EVENTS, Tricks
from tests.simulator.support import (
    SECRET,
    Receiver,
    make_config,
    receiving,
    running,
    truth_of,
)

WITH_PROGRESS = Lifecycle(min_duration_s=0.2, max_duration_s=0.3, progress_callbacks=True)
CANCELLING = Lifecycle(min_duration_s=0.1, max_duration_s=0.2, succeeded_weight=0, failed_weight=0)
SUCCEEDING = Lifecycle(min_duration_s=0.1, max_duration_s=0.2, failed_weight=0, cancelled_weight=0)


def task_of(body: bytes) -> dict[str, Any]:
    """The task fields of a gateway body: APIDot's `data`, EvoLink's envelope or bare object."""
    data = orjson.loads(body)
    inner: dict[str, Any] = data.get("data", data)
    return inner


async def test_unknown_gateway_status_word_comes_before_the_real_callback(
    receiver: Receiver,
) -> None:
    config = make_config(receiver, faults=Faults(unknown_status_rate=1.0))
    async with running(config) as run:
        await run.submit("apidot", f"{receiver.url}/callbacks/apidot/a")
        await run.submit("evolink", f"{receiver.url}/callbacks/evolink/e")
        await receiver.wait_for(4)
        await run.sim.drain()
    words: dict[str, list[str]] = {}
    for request in receiver.requests:
        words.setdefault(request.path, []).append(task_of(request.body)["status"])
    assert words["/callbacks/apidot/a"][0] == "queued_for_gpu"
    assert words["/callbacks/apidot/a"][1] in ("finished", "failed")
    assert words["/callbacks/evolink/e"][0] == "rendering"
    assert words["/callbacks/evolink/e"][1] in ("completed", "failed")


async def test_unknown_video_event_is_signed_under_its_own_webhook_id(receiver: Receiver) -> None:
    config = make_config(receiver, faults=Faults(unknown_status_rate=1.0))
    async with running(config) as run:
        task_id = await run.submit("openai")
        unknown, known = await receiver.wait_for(2)
    events = [Webhook(SECRET).verify(r.body, r.headers) for r in (unknown, known)]
    assert events[0]["type"] == "video.in_progress"
    assert events[1]["type"] in ("video.completed", "video.failed")
    assert events[0]["data"] == events[1]["data"] == {"id": task_id}
    assert unknown.headers["webhook-id"] != known.headers["webhook-id"]


async def test_non_video_event_is_signed_and_names_no_video(receiver: Receiver) -> None:
    config = make_config(receiver, faults=Faults(non_video_event_rate=1.0))
    async with running(config) as run:
        await run.submit("openai")
        video, other = await receiver.wait_for(2)
        stats = run.sim.stats()
    event = Webhook(SECRET).verify(other.body, other.headers)
    assert event["type"] in NON_VIDEO_EVENTS
    assert not event["data"]["id"].startswith("video_")
    assert orjson.loads(video.body)["type"].startswith("video.")
    assert stats["callbacks"]["non_video_event"] == 1


async def test_cancelled_evolink_task_may_spell_its_status_cancelled(receiver: Receiver) -> None:
    config = make_config(receiver, lifecycle=CANCELLING, faults=Faults(cancel_spelling_rate=1.0))
    async with running(config) as run:
        await run.submit("evolink", f"{receiver.url}/callbacks/evolink/e")
        (callback,) = await receiver.wait_for(1)
    task = task_of(callback.body)
    assert task["status"] in CANCEL_SPELLINGS
    assert task["error"]["code"] == "request_cancelled"


async def test_cancel_spelling_leaves_finished_tasks_alone(receiver: Receiver) -> None:
    config = make_config(receiver, lifecycle=SUCCEEDING, faults=Faults(cancel_spelling_rate=1.0))
    async with running(config) as run:
        await run.submit("evolink", f"{receiver.url}/callbacks/evolink/e")
        (callback,) = await receiver.wait_for(1)
    assert task_of(callback.body)["status"] == "completed"


async def test_enveloped_evolink_callback_wraps_the_status_answer(receiver: Receiver) -> None:
    config = make_config(receiver, faults=Faults(envelope_rate=1.0))
    async with running(config) as run:
        task_id = await run.submit("evolink", f"{receiver.url}/callbacks/evolink/e")
        (callback,) = await receiver.wait_for(1)
        status = await run.status("evolink", task_id)
    assert orjson.loads(callback.body) == {"data": status.json()}


@pytest.mark.parametrize("fmt", ["apidot", "evolink"])
async def test_wrong_task_id_goes_to_the_tasks_own_url_naming_another(
    fmt: str, receiver: Receiver
) -> None:
    config = make_config(receiver, faults=Faults(wrong_task_id_rate=1.0))
    async with running(config) as run:
        task_id = await run.submit(fmt, f"{receiver.url}/callbacks/{fmt}/mine")
        (callback,) = await receiver.wait_for(1)
        await run.sim.drain()
        (sent,) = run.sim.sent()
    named = task_of(callback.body)["task_id" if fmt == "apidot" else "id"]
    assert callback.path == f"/callbacks/{fmt}/mine"
    assert named != task_id
    assert (sent["task_id"], sent["names"], sent["tricks"]) == (task_id, named, ["wrong_task_id"])


def test_wrong_task_id_names_another_task_of_the_format_or_a_made_up_one() -> None:
    schedule = Schedule(100.0, 101.0, 102.0, "succeeded")
    task = SimTask("evolink", "task-unified-100-mine0000", "m", {}, None, schedule)
    ids = [task.task_id, "task-unified-100-other000"]
    counts: Counter[str] = Counter()
    faults = Faults(wrong_task_id_rate=1.0)
    tricks = Tricks(random.Random(1), lambda: faults, counts, lambda _: ids)
    body = {"id": task.task_id, "status": "completed"}
    named = {tricks.gateway(task, body, 100.0)[0].names for _ in range(40)}
    assert ids[1] in named
    assert task.task_id not in named
    assert all(name.startswith("task-unified-") for name in named)
    assert counts["wrong_task_id"] == 40


def test_tricks_off_draw_nothing_from_their_random_stream() -> None:
    rng = random.Random(5)
    before = rng.getstate()
    task = SimTask("apidot", "t", "m", {}, None, Schedule(100.0, 101.0, 102.0, "succeeded"))
    tricks = Tricks(rng, Faults, Counter(), lambda _: [])
    body = {"code": 200, "data": {"task_id": "t", "status": "finished"}}
    (message,) = tricks.gateway(task, body, 102.0)
    assert (message.body, message.names, message.tricks) == (body, "t", ())
    assert rng.getstate() == before


async def test_sent_log_records_each_attempts_answer_by_message() -> None:
    async with receiving(statuses=[503, 401]) as receiver, running(make_config(receiver)) as run:
        await run.submit("apidot", f"{receiver.url}/callbacks/apidot/t")
        first, *_ = await receiver.wait_for(3)
        await run.sim.drain()
        (sent,) = run.sim.sent()
        stats = run.sim.stats()
    assert sent["key"] == hashlib.sha256(first.body).hexdigest()
    assert (sent["authentic"], sent["answers"]) == (True, [503, 401, 200])
    assert stats["callback_answers"]["authentic"] == {"503": 1, "401": 1, "200": 1}


async def test_sent_log_keys_webhooks_by_id_and_marks_forged_ones(receiver: Receiver) -> None:
    config = make_config(receiver, faults=Faults(bad_signature_rate=1.0))
    async with running(config) as run:
        await run.submit("openai")
        (webhook,) = await receiver.wait_for(1)
        await run.sim.drain()
        (sent,) = run.sim.sent()
        stats = run.sim.stats()
    assert (sent["key"], sent["authentic"]) == (webhook.headers["webhook-id"], False)
    assert stats["callback_answers"] == {"authentic": {}, "forged": {"200": 1}}


async def test_duplicate_copies_are_attempts_of_one_message(receiver: Receiver) -> None:
    config = make_config(receiver, faults=Faults(duplicate_rate=1.0))
    async with running(config) as run:
        await run.submit("evolink", f"{receiver.url}/callbacks/evolink/e")
        await receiver.wait_for(2)
        await run.sim.drain()
        (sent,) = run.sim.sent()
    assert sent["answers"] == [200] * len(receiver.requests)


async def test_submits_are_counted_per_prompt_and_truth_names_prompt_and_results() -> None:
    async with running(make_config(lifecycle=SUCCEEDING)) as run:
        task_id = await run.submit("apidot")
        await run.submit("apidot")
        await run.wait_terminal("apidot", task_id)
        truth = truth_of(run.sim, task_id)
        stats = run.sim.stats()
    assert stats["submits_by_prompt"] == {"apidot/a cat": 2}
    assert truth["prompt"] == "a cat"
    assert truth["result_urls"][0].startswith(f"{run.url}/media/apidot/{task_id}.mp4?expires=")


async def test_unknown_status_on_a_running_callback_keeps_the_order(receiver: Receiver) -> None:
    config = make_config(receiver, lifecycle=WITH_PROGRESS, faults=Faults(unknown_status_rate=1.0))
    async with running(config) as run:
        await run.submit("evolink", f"{receiver.url}/callbacks/evolink/e")
        requests = await receiver.wait_for(4)
    words = [task_of(r.body)["status"] for r in requests]
    assert words[:3] == ["rendering", "processing", "rendering"]
    assert words[3] in ("completed", "failed")
