"""The platforms' routes over real HTTP: Replicate, fal.ai and kie.ai submit, callbacks, polls,
each checked against the simulator's truth and with an independent signature check."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks import Webhook, WebhookVerificationError

from simulator import Faults, Lifecycle
from tests.simulator.support import (
    WAIT_SECONDS,
    Captured,
    FakeClock,
    Receiver,
    Running,
    make_config,
    receiving,
    running,
    truth_of,
    wait_until,
)

SUCCEEDING = Lifecycle(min_duration_s=0.1, max_duration_s=0.2, failed_weight=0, cancelled_weight=0)
FAILING = Lifecycle(min_duration_s=0.1, max_duration_s=0.2, succeeded_weight=0, cancelled_weight=0)
SLOW = Lifecycle(min_duration_s=30, max_duration_s=30, max_queued_share=1.0)
KIE_KEY = "kie-webhook-key"
FAL_KEY = {"authorization": "Key fal-test"}
ALL_EVENTS = ["start", "output", "logs", "completed"]


async def poll_until_ended(run: Running, path: str, **kwargs: Any) -> list[dict[str, Any]]:
    """GET `path` until the simulator's truth says every task has ended; every body seen."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_SECONDS):
        while not seen or not all(task["terminal"] for task in run.sim.truth()):
            seen.append((await run.client.get(path, **kwargs)).json())
            await asyncio.sleep(0.02)
    seen.append((await run.client.get(path, **kwargs)).json())
    return seen


# -- Replicate -------------------------------------------------------------------------


async def submit_replicate(run: Running, webhook: str, events: list[str] = ALL_EVENTS) -> str:
    body = {"input": {"prompt": "a cat"}, "webhook": webhook, "webhook_events_filter": events}
    response = await run.client.post("/replicate/v1/models/acme/video-1/predictions", json=body)
    assert response.status_code == 201
    return str(response.json()["id"])


async def replicate_secret(run: Running) -> str:
    return str((await run.client.get("/replicate/v1/webhooks/default/secret")).json()["key"])


async def test_replicate_webhooks_verify_and_end_as_the_poll_does(receiver: Receiver) -> None:
    async with running(make_config(lifecycle=SUCCEEDING)) as run:
        task_id = await submit_replicate(run, f"{receiver.url}/hooks/replicate")
        polls = await poll_until_ended(run, f"/replicate/v1/predictions/{task_id}")
        await run.sim.drain()
        secret = await replicate_secret(run)
        truth = truth_of(run.sim, task_id)
    bodies = [Webhook(secret).verify(r.body, r.headers) for r in receiver.requests]
    assert bodies[0]["status"] == "starting"
    assert bodies[-1] == polls[-1]
    assert (bodies[-1]["status"], truth["final_state"]) == ("succeeded", "succeeded")
    output = bodies[-1]["output"]
    assert (output if isinstance(output, list) else [output]) == truth["result_urls"]


async def test_replicate_prediction_carries_the_documented_fields() -> None:
    async with running(make_config()) as run:
        task_id = await submit_replicate(run, "http://127.0.0.1:9/unused", ["completed"])
        body = (await run.client.get(f"/replicate/v1/predictions/{task_id}")).json()
    assert set(body) >= {
        *("id", "model", "version", "status", "input", "output", "logs", "error", "metrics"),
        *("created_at", "started_at", "completed_at", "urls"),
    }
    assert (body["model"], body["input"], body["status"]) == (
        "acme/video-1",
        {"prompt": "a cat"},
        "starting",
    )
    assert body["urls"]["get"].endswith(f"/replicate/v1/predictions/{task_id}")


async def test_replicate_completed_filter_sends_only_the_final_webhook(receiver: Receiver) -> None:
    async with running(make_config(lifecycle=SUCCEEDING)) as run:
        task_id = await submit_replicate(run, f"{receiver.url}/h", ["completed"])
        await poll_until_ended(run, f"/replicate/v1/predictions/{task_id}")
        await wait_until(lambda: bool(run.sim.sent()))
        await run.sim.drain()
    (webhook,) = receiver.requests
    assert orjson.loads(webhook.body)["status"] == "succeeded"


async def test_replicate_retries_only_the_completed_webhook() -> None:
    async with receiving(statuses=[500, 500]) as receiver, running(make_config()) as run:
        await submit_replicate(run, f"{receiver.url}/h", ["start", "completed"])
        await receiver.wait_for(3)
        await run.sim.drain()
        answers = [m["answers"] for m in run.sim.sent()]
    assert answers == [[500], [500, 200]]


async def test_replicate_cancel_ends_a_running_prediction_canceled() -> None:
    async with running(make_config(lifecycle=SLOW)) as run:
        task_id = await submit_replicate(run, "http://127.0.0.1:9/unused", ["completed"])
        cancelled = await run.client.post(f"/replicate/v1/predictions/{task_id}/cancel")
        truth = truth_of(run.sim, task_id)
    assert (cancelled.json()["status"], truth["normalized"]) == ("canceled", "cancelled")


async def test_replicate_forged_webhook_fails_verification(receiver: Receiver) -> None:
    config = make_config(faults=Faults(bad_signature_rate=1.0))
    async with running(config) as run:
        await submit_replicate(run, f"{receiver.url}/h", ["completed"])
        (webhook,) = await receiver.wait_for(1)
        secret = await replicate_secret(run)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(webhook.body, webhook.headers)


async def test_replicate_version_route_takes_owner_name_and_version() -> None:
    body = {"version": "acme/video-1:abc123", "input": {"prompt": "a dog"}}
    async with running(make_config()) as run:
        created = (await run.client.post("/replicate/v1/predictions", json=body)).json()
    assert (created["model"], created["version"]) == ("acme/video-1", "abc123")


# -- fal.ai ----------------------------------------------------------------------------


def fal_verifies(jwks: dict[str, Any], webhook: Captured) -> bool:
    """fal's documented check, written here from the docs: any JWKS key verifies."""
    headers = webhook.headers
    digest = hashlib.sha256(webhook.body).hexdigest()
    message = "\n".join(
        [
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            headers["x-fal-webhook-timestamp"],
            digest,
        ]
    ).encode()
    for key in jwks["keys"]:
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(
                bytes.fromhex(headers["x-fal-webhook-signature"]), message
            )
        except InvalidSignature:
            continue
        return True
    return False


async def submit_fal(run: Running, webhook: str, model: str = "fal-ai/veo3") -> dict[str, Any]:
    url = f"/fal/{model}?fal_webhook={quote(webhook, safe='')}"
    response = await run.client.post(url, json={"prompt": "a cat"}, headers=FAL_KEY)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def test_fal_webhook_verifies_against_the_served_jwks(receiver: Receiver) -> None:
    async with running(make_config(lifecycle=SUCCEEDING, fal_user_id="user-7")) as run:
        submitted = await submit_fal(run, f"{receiver.url}/hooks/fal")
        (webhook,) = await receiver.wait_for(1)
        jwks = (await run.client.get("/fal/.well-known/jwks.json")).json()
    assert fal_verifies(jwks, webhook)
    assert webhook.headers["x-fal-webhook-user-id"] == "user-7"
    assert webhook.headers["x-fal-webhook-request-id"] == submitted["request_id"]


async def test_fal_forged_webhook_fails_against_the_served_jwks(receiver: Receiver) -> None:
    async with running(make_config(faults=Faults(bad_signature_rate=1.0))) as run:
        await submit_fal(run, f"{receiver.url}/hooks/fal")
        (webhook,) = await receiver.wait_for(1)
        jwks = (await run.client.get("/fal/.well-known/jwks.json")).json()
    assert not fal_verifies(jwks, webhook)


async def test_fal_status_completes_and_result_equals_the_webhook_payload(
    receiver: Receiver,
) -> None:
    async with running(make_config(lifecycle=SUCCEEDING)) as run:
        submitted = await submit_fal(run, f"{receiver.url}/hooks/fal", "fal-ai/veo3/text-to-video")
        statuses = await poll_until_ended(run, submitted["status_url"], headers=FAL_KEY)
        result = await run.client.get(submitted["response_url"], headers=FAL_KEY)
        (webhook,) = await receiver.wait_for(1)
        truth = truth_of(run.sim, submitted["request_id"])
    body = orjson.loads(webhook.body)
    assert "/text-to-video" not in submitted["status_url"]
    assert statuses[-1]["status"] == "COMPLETED"
    assert (body["status"], body["payload"]) == ("OK", result.json())
    assert [result.json()["video"]["url"]] == truth["result_urls"]


async def test_fal_failed_request_errors_in_the_webhook_and_the_result(receiver: Receiver) -> None:
    async with running(make_config(lifecycle=FAILING)) as run:
        submitted = await submit_fal(run, f"{receiver.url}/hooks/fal")
        (webhook,) = await receiver.wait_for(1)
        result = await run.client.get(submitted["response_url"], headers=FAL_KEY)
    body = orjson.loads(webhook.body)
    assert (body["status"], body["error"]) == ("ERROR", "Invalid status code: 422")
    assert (result.status_code, result.json()) == (422, body["payload"])


async def test_fal_queued_request_says_its_place_and_cancels_once() -> None:
    async with running(make_config(lifecycle=SLOW)) as run:
        first = await submit_fal(run, "http://127.0.0.1:9/unused")
        second = await submit_fal(run, "http://127.0.0.1:9/unused")
        status = (await run.client.get(second["status_url"], headers=FAL_KEY)).json()
        cancelled = await run.client.put(first["cancel_url"], headers=FAL_KEY)
        again = await run.client.put(first["cancel_url"], headers=FAL_KEY)
    assert (status["status"], status["queue_position"]) == ("IN_QUEUE", 1)
    assert (cancelled.status_code, again.status_code, again.json()) == (
        202,
        400,
        {"status": "ALREADY_COMPLETED"},
    )


async def test_fal_refuses_a_bearer_token() -> None:
    async with running(make_config()) as run:
        response = await run.client.post("/fal/fal-ai/veo3", json={"prompt": "a cat"})
    assert response.status_code == 401


# -- kie.ai ----------------------------------------------------------------------------


async def submit_kie(run: Running, callback: str) -> str:
    body = {"model": "veo3_fast", "callBackUrl": callback, "input": {"prompt": "a cat"}}
    response = await run.client.post("/kie/api/v1/jobs/createTask", json=body)
    response.raise_for_status()
    return str(response.json()["data"]["taskId"])


def kie_signature(key: str, task_id: str, timestamp: str) -> str:
    mac = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


async def test_kie_callback_is_signed_and_matches_the_record(receiver: Receiver) -> None:
    config = make_config(lifecycle=SUCCEEDING, kie_webhook_key=KIE_KEY)
    async with running(config) as run:
        task_id = await submit_kie(run, f"{receiver.url}/hooks/kie")
        records = await poll_until_ended(run, f"/kie/api/v1/jobs/recordInfo?taskId={task_id}")
        (callback,) = await receiver.wait_for(1)
        truth = truth_of(run.sim, task_id)
    timestamp = callback.headers["x-webhook-timestamp"]
    assert callback.headers["x-webhook-signature"] == kie_signature(KIE_KEY, task_id, timestamp)
    data = orjson.loads(callback.body)["data"]
    assert data == records[-1]["data"]
    assert orjson.loads(data["resultJson"])["resultUrls"] == truth["result_urls"]
    assert orjson.loads(data["param"])["input"] == {"prompt": "a cat"}
    assert (data["state"], truth["final_state"]) == ("success", "success")


async def test_kie_forged_callback_signature_does_not_verify(receiver: Receiver) -> None:
    config = make_config(kie_webhook_key=KIE_KEY, faults=Faults(bad_signature_rate=1.0))
    async with running(config) as run:
        task_id = await submit_kie(run, f"{receiver.url}/hooks/kie")
        (callback,) = await receiver.wait_for(1)
    timestamp = callback.headers["x-webhook-timestamp"]
    assert callback.headers["x-webhook-signature"] != kie_signature(KIE_KEY, task_id, timestamp)
    assert callback.path == "/hooks/kie"


async def test_kie_callback_is_unsigned_without_a_key(receiver: Receiver) -> None:
    async with running(make_config()) as run:
        await submit_kie(run, f"{receiver.url}/hooks/kie")
        (callback,) = await receiver.wait_for(1)
    assert "x-webhook-signature" not in callback.headers


async def test_kie_failed_task_says_fail_with_code_and_message(receiver: Receiver) -> None:
    async with running(make_config(lifecycle=FAILING)) as run:
        task_id = await submit_kie(run, f"{receiver.url}/hooks/kie")
        (callback,) = await receiver.wait_for(1)
        truth = truth_of(run.sim, task_id)
    data = orjson.loads(callback.body)["data"]
    assert (data["state"], data["failCode"], data["resultJson"]) == ("fail", "500", "")
    assert truth["normalized"] == "failed"


async def test_kie_download_url_links_a_result_url_for_20_minutes() -> None:
    async with running(make_config(), clock=FakeClock()) as run:
        task_id = await submit_kie(run, "http://127.0.0.1:9/unused")
        run.sim.finish("kie", task_id, "succeeded")
        (url,) = truth_of(run.sim, task_id)["result_urls"]
        ok = await run.client.post("/kie/api/v1/common/download-url", json={"url": url})
        bad = await run.client.post("/kie/api/v1/common/download-url", json={"url": "x"})
        fetched = await run.client.get(ok.json()["data"])
        original = await run.client.get(url)
    expires = int(run.sim.clock()) + 20 * 60
    assert ok.json()["code"] == 200
    assert ok.json()["data"].startswith(f"{url.partition('?')[0]}?expires={expires}&sig=")
    assert fetched.content == original.content
    assert bad.json()["code"] == 422


async def test_platform_polls_are_counted_and_faulted() -> None:
    async with running(make_config(faults=Faults(poll_429_rate=1.0))) as run:
        task_id = await submit_kie(run, "http://127.0.0.1:9/unused")
        refused = await run.client.get(f"/kie/api/v1/jobs/recordInfo?taskId={task_id}")
        stats = run.sim.stats()
    assert refused.status_code == 429
    assert stats["polls_by_format"]["kie"] == 1


# -- the platforms' tricks ---------------------------------------------------------------


async def test_fal_retried_webhook_names_another_gateway_request(receiver: Receiver) -> None:
    config = make_config(faults=Faults(gateway_retry_rate=1.0))
    async with running(config) as run:
        submitted = await submit_fal(run, f"{receiver.url}/hooks/fal")
        (webhook,) = await receiver.wait_for(1)
        (sent,) = run.sim.sent()
    body = orjson.loads(webhook.body)
    assert body["request_id"] == submitted["request_id"] != body["gateway_request_id"]
    assert sent["tricks"] == ["gateway_retry"]


async def test_fal_payload_error_leaves_the_result_to_fetch(receiver: Receiver) -> None:
    config = make_config(lifecycle=SUCCEEDING, faults=Faults(payload_error_rate=1.0))
    async with running(config) as run:
        submitted = await submit_fal(run, f"{receiver.url}/hooks/fal")
        (webhook,) = await receiver.wait_for(1)
        result = await run.client.get(submitted["response_url"], headers=FAL_KEY)
        truth = truth_of(run.sim, submitted["request_id"])
    body = orjson.loads(webhook.body)
    assert (body["status"], body["payload"], bool(body["payload_error"])) == ("OK", None, True)
    assert [result.json()["video"]["url"]] == truth["result_urls"]


async def test_kie_callback_may_say_task_id_in_snake_case(receiver: Receiver) -> None:
    config = make_config(kie_webhook_key=KIE_KEY, faults=Faults(snake_task_id_rate=1.0))
    async with running(config) as run:
        task_id = await submit_kie(run, f"{receiver.url}/hooks/kie")
        (callback,) = await receiver.wait_for(1)
    data = orjson.loads(callback.body)["data"]
    assert (data["task_id"], "taskId" in data) == (task_id, False)
    timestamp = callback.headers["x-webhook-timestamp"]
    assert callback.headers["x-webhook-signature"] == kie_signature(KIE_KEY, task_id, timestamp)


async def test_fal_wrong_task_id_is_signed_for_the_id_it_names(receiver: Receiver) -> None:
    async with running(make_config(faults=Faults(wrong_task_id_rate=1.0))) as run:
        submitted = await submit_fal(run, f"{receiver.url}/hooks/fal")
        (webhook,) = await receiver.wait_for(1)
        jwks = (await run.client.get("/fal/.well-known/jwks.json")).json()
    named = orjson.loads(webhook.body)["request_id"]
    assert named != submitted["request_id"]
    assert webhook.headers["x-fal-webhook-request-id"] == named
    assert fal_verifies(jwks, webhook)


async def test_replicate_prediction_failed_before_it_ran_is_aborted() -> None:
    async with running(make_config(lifecycle=SLOW)) as run:
        task_id = await submit_replicate(run, "http://127.0.0.1:9/unused", ["completed"])
        await run.client.post(f"/_sim/tasks/replicate/{task_id}/finish", json={"outcome": "failed"})
        body = (await run.client.get(f"/replicate/v1/predictions/{task_id}")).json()
        truth = truth_of(run.sim, task_id)
    assert (body["status"], body["started_at"], bool(body["error"])) == ("aborted", None, True)
    assert (truth["final_state"], truth["normalized"]) == ("aborted", "failed")
