"""Callback and webhook delivery over real HTTP: wire bodies, signatures, faults, retries."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from simulator import Faults, Lifecycle, Simulator
from simulator.callbacks import flip_characters, tamper_url
from simulator.signatures import corrupt_signature
from tests.simulator.support import (
    SECRET,
    Receiver,
    make_config,
    receiving,
    running,
    truth_of,
    wait_until,
)
from tests.support.servers import free_fixed_port

SUCCEEDING = Lifecycle(min_duration_s=0.1, max_duration_s=0.2, failed_weight=0, cancelled_weight=0)
WITH_PROGRESS = Lifecycle(min_duration_s=0.2, max_duration_s=0.3, progress_callbacks=True)


def terminal_sent(sim: Simulator, fmt: str, task_id: str) -> bool:
    task = sim.get(fmt, task_id)
    return task is not None and task.terminal_sent


def status_of(body: bytes) -> str:
    data = orjson.loads(body)
    return str(data["data"]["status"] if "code" in data else data["status"])


async def test_openai_webhook_verifies_with_standard_webhooks(receiver: Receiver) -> None:
    async with running(make_config(receiver)) as run:
        await run.submit("openai")
        (webhook,) = await receiver.wait_for(1)
    event = Webhook(SECRET).verify(webhook.body, webhook.headers)
    assert event["type"] in ("video.completed", "video.failed")


async def test_openai_webhook_is_a_thin_event_naming_the_video(receiver: Receiver) -> None:
    async with running(make_config(receiver, lifecycle=SUCCEEDING)) as run:
        task_id = await run.submit("openai")
        (webhook,) = await receiver.wait_for(1)
    event = orjson.loads(webhook.body)
    assert webhook.path == "/webhooks/openai"
    assert event["id"].startswith("evt_")
    assert set(event) == {"id", "object", "created_at", "type", "data"}
    assert (event["object"], event["type"], event["data"]) == (
        "event",
        "video.completed",
        {"id": task_id},
    )


@pytest.mark.parametrize("fmt", ["apidot", "evolink"])
async def test_gateway_callback_body_equals_the_status_answer(fmt: str, receiver: Receiver) -> None:
    async with running(make_config(receiver)) as run:
        task_id = await run.submit(fmt, f"{receiver.url}/callbacks/{fmt}/token")
        (callback,) = await receiver.wait_for(1)
        status = await run.status(fmt, task_id)
    assert callback.path == f"/callbacks/{fmt}/token"
    assert orjson.loads(callback.body) == status.json()


async def test_dropped_callbacks_never_arrive(receiver: Receiver) -> None:
    config = make_config(receiver, faults=Faults(drop_rate=1.0))
    async with running(config) as run:
        task_id = await run.submit("evolink", f"{receiver.url}/callbacks/evolink/token")
        await run.wait_terminal("evolink", task_id)
        # The terminal event has fired once its callback is planned (here: dropped); a send
        # it started would be awaited by the drain.
        await wait_until(lambda: terminal_sent(run.sim, "evolink", task_id))
        await run.sim.drain()
        stats = run.sim.stats()
    assert stats["callbacks"]["dropped"] == 1
    assert stats["callbacks"]["pending"] == 0
    assert receiver.requests == []


async def test_duplicated_webhooks_repeat_one_webhook_id(receiver: Receiver) -> None:
    async with running(make_config(receiver, faults=Faults(duplicate_rate=1.0))) as run:
        await run.submit("openai")
        await receiver.wait_for(2)
        await run.sim.drain()
    ids = {request.headers["webhook-id"] for request in receiver.requests}
    assert 2 <= len(receiver.requests) <= 3
    assert len(ids) == 1
    for request in receiver.requests:
        Webhook(SECRET).verify(request.body, request.headers)


async def test_reordered_terminal_callback_arrives_before_the_running_one(
    receiver: Receiver,
) -> None:
    config = make_config(receiver, lifecycle=WITH_PROGRESS, faults=Faults(reorder_rate=1.0))
    async with running(config) as run:
        await run.submit("apidot", f"{receiver.url}/callbacks/apidot/token")
        first, second = await receiver.wait_for(2)
        stats = run.sim.stats()
    assert status_of(first.body) in ("finished", "failed")
    assert status_of(second.body) == "running"
    assert stats["callbacks"]["reordered"] == 1


async def test_running_callback_precedes_terminal_without_faults(receiver: Receiver) -> None:
    async with running(make_config(receiver, lifecycle=WITH_PROGRESS)) as run:
        await run.submit("evolink", f"{receiver.url}/callbacks/evolink/token")
        first, second = await receiver.wait_for(2)
    assert status_of(first.body) == "processing"
    assert status_of(second.body) in ("completed", "failed")


async def test_openai_progress_is_never_sent_as_a_webhook(receiver: Receiver) -> None:
    async with running(make_config(receiver, lifecycle=WITH_PROGRESS)) as run:
        task_id = await run.submit("openai")
        await run.wait_terminal("openai", task_id)
        await receiver.wait_for(1)
        await run.sim.drain()
    assert len(receiver.requests) == 1


async def test_bad_signature_webhook_fails_verification(receiver: Receiver) -> None:
    config = make_config(receiver, faults=Faults(bad_signature_rate=1.0))
    async with running(config) as run:
        await run.submit("openai")
        (webhook, *_) = await receiver.wait_for(1)
        stats = run.sim.stats()
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(webhook.body, webhook.headers)
    assert stats["callbacks"]["forged"] == 1


async def test_bad_signature_tampers_the_token_of_a_gateway_callback(receiver: Receiver) -> None:
    token = "eyJyZWYiOiJ0XzEifQ.ZmXvYg.c2lnbmF0dXJl"
    config = make_config(receiver, faults=Faults(bad_signature_rate=1.0))
    async with running(config) as run:
        await run.submit("apidot", f"{receiver.url}/callbacks/apidot/{token}")
        (callback, *_) = await receiver.wait_for(1)
    head, _, sent_token = callback.path.rpartition("/")
    assert head == "/callbacks/apidot"
    assert sent_token != token
    assert len(sent_token) == len(token)


async def test_non_2xx_answer_is_retried_with_the_same_webhook_id() -> None:
    async with receiving(statuses=[500]) as receiver, running(make_config(receiver)) as run:
        await run.submit("openai")
        failed, retried = await receiver.wait_for(2)
        await run.sim.drain()
        stats = run.sim.stats()
    assert failed.headers["webhook-id"] == retried.headers["webhook-id"]
    Webhook(SECRET).verify(retried.body, retried.headers)
    assert (stats["callbacks"]["retried"], stats["callbacks"]["delivered"]) == (1, 1)


async def test_redirect_counts_as_a_failed_attempt() -> None:
    async with receiving(statuses=[307]) as receiver, running(make_config(receiver)) as run:
        await run.submit("evolink", f"{receiver.url}/callbacks/evolink/token")
        await receiver.wait_for(2)
        await run.sim.drain()
    assert len(receiver.requests) == 2


async def test_gateway_gives_up_after_three_retries() -> None:
    async with receiving(statuses=[500] * 10) as receiver, running(make_config(receiver)) as run:
        await run.submit("apidot", f"{receiver.url}/callbacks/apidot/token")
        await receiver.wait_for(4)
        await run.sim.drain()
        stats = run.sim.stats()
    assert len(receiver.requests) == 4
    assert stats["callbacks"]["failed"] == 1


async def test_transport_errors_are_retried_then_given_up() -> None:
    # Below the ephemeral range: no other test's connection can come to hold this port.
    dead_url = f"http://127.0.0.1:{free_fixed_port()}/callbacks/evolink/token"
    lifecycle = Lifecycle(min_duration_s=0.05, max_duration_s=0.1)
    async with running(make_config(lifecycle=lifecycle)) as run:
        task_id = await run.submit("evolink", dead_url)
        await run.wait_terminal("evolink", task_id)
        await wait_until(lambda: run.sim.stats()["callbacks"]["failed"] == 1)
        await run.sim.drain()
        stats = run.sim.stats()
    assert stats["callbacks"]["transport_errors"] == 4
    assert stats["callbacks"]["failed"] == 1


async def test_delayed_callback_still_arrives_after_its_delay(receiver: Receiver) -> None:
    faults = Faults(delay_rate=1.0, max_callback_delay_s=0.2)
    async with running(make_config(receiver, faults=faults)) as run:
        task_id = await run.submit("apidot", f"{receiver.url}/callbacks/apidot/token")
        (callback,) = await receiver.wait_for(1)
        stats = run.sim.stats()
    assert orjson.loads(callback.body)["data"]["task_id"] == task_id
    assert stats["callbacks"]["delayed"] == 1


async def test_callbacks_go_only_to_the_url_given_at_submit(receiver: Receiver) -> None:
    async with running(make_config(receiver)) as run:
        await run.submit("evolink", f"{receiver.url}/callbacks/evolink/mine")
        silent = await run.submit("apidot")
        await receiver.wait_for(1)
        await run.wait_terminal("apidot", silent)  # its callback, had it one, was due by now
        await run.sim.drain()
    assert [request.path for request in receiver.requests] == ["/callbacks/evolink/mine"]


async def test_shutdown_cancels_callbacks_waiting_to_retry() -> None:
    async with receiving(statuses=[500] * 10) as receiver:
        config = make_config(receiver, time_scale=100.0)
        async with running(config) as run:
            await run.submit("openai")
            await receiver.wait_for(1)
            sim = run.sim
        assert sim.sender.pending == 0
    assert len(receiver.requests) == 1


async def test_ground_truth_outcome_matches_the_webhook_type(receiver: Receiver) -> None:
    async with running(make_config(receiver)) as run:
        task_id = await run.submit("openai")
        (webhook,) = await receiver.wait_for(1)
        truth = truth_of(run.sim, task_id)
    expected = "video.completed" if truth["normalized"] == "succeeded" else "video.failed"
    assert orjson.loads(webhook.body)["type"] == expected


def test_corrupt_signature_keeps_the_v1_base64_shape() -> None:
    signed = Webhook(SECRET).sign("wh_1", datetime.now(UTC), "{}")
    forged = corrupt_signature(signed)
    assert forged.startswith("v1,")
    assert forged != signed


def test_tamper_url_changes_only_the_last_path_segment() -> None:
    url = "http://127.0.0.1:8000/callbacks/apidot/abc.def.ghi?x=1"
    assert tamper_url(url) == "http://127.0.0.1:8000/callbacks/apidot/Zbc.dZf.ghi?x=1"


def test_flip_characters_changes_a_segment_of_z() -> None:
    assert flip_characters("ZZZ") != "ZZZ"


async def test_callbacks_of_one_task_keep_their_order_through_retries() -> None:
    async with (
        receiving(statuses=[500]) as receiver,
        running(make_config(receiver, lifecycle=WITH_PROGRESS)) as run,
    ):
        await run.submit("apidot", f"{receiver.url}/callbacks/apidot/token")
        requests = await receiver.wait_for(3)
    assert [status_of(request.body) for request in requests][:2] == ["running", "running"]
    assert status_of(requests[2].body) in ("finished", "failed")
