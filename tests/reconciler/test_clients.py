"""Provider clients over httpx.MockTransport (and once against the simulator on loopback)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.clients import (
    SUBMIT_KEEPALIVE_SECONDS,
    ProviderClient,
    ProviderClients,
)
from reconciler.errors import BadAnswer, ProviderUnavailable, RateLimited, Rejected
from reconciler.limits import RateLimiter
from reconciler.retry import DEFAULT_RETRY_AFTER_SECONDS, RetryPolicy
from schemas.settings import ProviderSettings, Settings
from schemas.states import State
from schemas.tables import BODY_KEEP_CHARS
from schemas.wire import WireFormat
from simulator import Lifecycle, SimConfig, create_app
from tests.support.fake_time import FakeTime
from tests.support.servers import free_port, serve

OPENAI, APIDOT, EVOLINK = WireFormat.OPENAI, WireFormat.APIDOT, WireFormat.EVOLINK
AIVIDEOAPI = WireFormat.AIVIDEOAPI
BASE_URL = "https://provider.example/base"
API_KEY = "sk-test-secret"
VIDEO_ID = "video_68d7512d07848190"
GATEWAY_ID = "task-unified-1757169743-7cvnl5zw"
NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)

Handler = Callable[[httpx.Request], httpx.Response]

STATUS_BODIES: dict[WireFormat, tuple[str, dict[str, object]]] = {
    OPENAI: (
        VIDEO_ID,
        {"id": VIDEO_ID, "object": "video", "status": "in_progress", "progress": 40},
    ),
    APIDOT: (GATEWAY_ID, {"code": 200, "data": {"task_id": GATEWAY_ID, "status": "running"}}),
    EVOLINK: (GATEWAY_ID, {"id": GATEWAY_ID, "status": "processing", "progress": 40}),
    AIVIDEOAPI: (GATEWAY_ID, {"id": GATEWAY_ID, "status": "processing", "progress": 40}),
}


@dataclass
class Provider:
    """A scripted provider: answers (or raises) in turn, the last one repeated; records requests."""

    script: list[httpx.Response | Exception]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(step, Exception):
            raise step
        return step


@dataclass
class Rig:
    client: ProviderClient
    provider: Provider
    limiter_time: FakeTime
    retry_sleeps: list[float]


def answer(status: int, body: object = None, **headers: str) -> httpx.Response:
    content = orjson.dumps(body) if body is not None else b""
    return httpx.Response(status, content=content, headers=headers)


def status_ok(kind: WireFormat = OPENAI) -> httpx.Response:
    return answer(200, STATUS_BODIES[kind][1])


@asynccontextmanager
async def rig(
    *script: httpx.Response | Exception,
    kind: WireFormat = OPENAI,
    api_key: str = API_KEY,
    base_url: str = BASE_URL,
    result_ttl_seconds: float | None = None,
) -> AsyncIterator[Rig]:
    provider = Provider(list(script))
    settings = ProviderSettings(
        kind.value,
        kind,
        base_url=base_url,
        api_key=api_key,
        result_ttl_seconds=result_ttl_seconds,
    )
    time = FakeTime()
    sleeps: list[float] = []

    async def retry_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    limiter = RateLimiter(1000, 10, clock=time.clock, sleep=time.sleep)
    policy = RetryPolicy(attempts=3, rng=random.Random(1))
    async with httpx.AsyncClient(transport=httpx.MockTransport(provider)) as http:
        client = ProviderClient(settings, http, limiter, policy, retry_sleep, clock=lambda: NOW)
        yield Rig(client, provider, time, sleeps)


def timeout(kind: type[httpx.TimeoutException] = httpx.ReadTimeout) -> httpx.TimeoutException:
    return kind("timed out")


# -- fetch_status ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(STATUS_BODIES), ids=str)
async def test_fetch_status_normalizes_each_format(kind: WireFormat) -> None:
    task_id, _ = STATUS_BODIES[kind]
    async with rig(status_ok(kind), kind=kind) as r:
        found = await r.client.fetch_status(task_id)
    assert (found.observation.provider_task_id, found.observation.state) == (task_id, State.RUNNING)


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        (OPENAI, f"/base/v1/videos/{VIDEO_ID}"),
        (APIDOT, f"/base/api/generate/status/{GATEWAY_ID}"),
        (EVOLINK, f"/base/v1/tasks/{GATEWAY_ID}"),
        (AIVIDEOAPI, f"/base/v1/tasks/{GATEWAY_ID}"),
    ],
    ids=str,
)
async def test_fetch_status_gets_the_formats_status_path(kind: WireFormat, path: str) -> None:
    async with rig(status_ok(kind), kind=kind) as r:
        await r.client.fetch_status(STATUS_BODIES[kind][0])
    assert (r.provider.requests[0].method, r.provider.requests[0].url.path) == ("GET", path)


async def test_fetch_status_keeps_status_and_body_for_the_audit() -> None:
    async with rig(status_ok()) as r:
        found = await r.client.fetch_status(VIDEO_ID)
    assert (found.http_status, orjson.loads(found.body)) == (200, STATUS_BODIES[OPENAI][1])


async def test_fetch_status_trims_a_long_body_for_the_audit() -> None:
    body = {**STATUS_BODIES[OPENAI][1], "padding": "x" * 10_000}
    async with rig(answer(200, body)) as r:
        found = await r.client.fetch_status(VIDEO_ID)
    assert len(found.body) == BODY_KEEP_CHARS


async def test_fetch_status_sends_the_api_key_as_a_bearer_token() -> None:
    async with rig(status_ok()) as r:
        await r.client.fetch_status(VIDEO_ID)
    assert r.provider.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_fetch_status_sends_no_authorization_without_an_api_key() -> None:
    async with rig(status_ok(), api_key="") as r:
        await r.client.fetch_status(VIDEO_ID)
    assert "authorization" not in r.provider.requests[0].headers


async def test_rate_limited_answer_raises_with_its_retry_after() -> None:
    async with rig(answer(429, {"error": {}}, **{"Retry-After": "7"})) as r:
        with pytest.raises(RateLimited) as caught:
            await r.client.fetch_status(VIDEO_ID)
    assert (caught.value.retry_after_seconds, caught.value.status_code) == (7.0, 429)


async def test_rate_limited_answer_is_not_retried_inline() -> None:
    async with rig(answer(429, **{"Retry-After": "7"}), status_ok()) as r:
        with pytest.raises(RateLimited):
            await r.client.fetch_status(VIDEO_ID)
    assert len(r.provider.requests) == 1


async def test_rate_limited_answer_pauses_the_providers_limiter() -> None:
    async with rig(answer(429, **{"Retry-After": "7"}), status_ok()) as r:
        with pytest.raises(RateLimited):
            await r.client.fetch_status(VIDEO_ID)
        paused_at = r.limiter_time.now
        await r.client.fetch_status(VIDEO_ID)
    assert r.limiter_time.now - paused_at == pytest.approx(7.0)


async def test_rate_limited_http_date_counts_from_the_servers_date() -> None:
    server_now = NOW - timedelta(hours=1)
    headers = {
        "Date": format_datetime(server_now, usegmt=True),
        "Retry-After": format_datetime(server_now + timedelta(seconds=20), usegmt=True),
    }
    async with rig(answer(429, **headers)) as r:
        with pytest.raises(RateLimited) as caught:
            await r.client.fetch_status(VIDEO_ID)
    assert caught.value.retry_after_seconds == 20.0


async def test_rate_limited_without_retry_after_waits_the_default() -> None:
    async with rig(answer(429)) as r:
        with pytest.raises(RateLimited) as caught:
            await r.client.fetch_status(VIDEO_ID)
    assert caught.value.retry_after_seconds == DEFAULT_RETRY_AFTER_SECONDS


async def test_server_error_then_success_is_retried_and_succeeds() -> None:
    async with rig(answer(500), status_ok()) as r:
        found = await r.client.fetch_status(VIDEO_ID)
    assert (found.observation.state, len(r.provider.requests)) == (State.RUNNING, 2)


async def test_retries_wait_a_backoff_within_the_policy_cap() -> None:
    async with rig(answer(503), answer(502), status_ok()) as r:
        await r.client.fetch_status(VIDEO_ID)
    assert len(r.retry_sleeps) == 2
    assert all(0 <= delay <= r.client.policy.max_delay_seconds for delay in r.retry_sleeps)


async def test_server_error_on_every_attempt_raises_provider_unavailable() -> None:
    async with rig(answer(500)) as r:
        with pytest.raises(ProviderUnavailable) as caught:
            await r.client.fetch_status(VIDEO_ID)
    assert (len(r.provider.requests), caught.value.status_code) == (3, 500)
    assert caught.value.retryable


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404])
async def test_refusal_raises_rejected_without_retry(status: int) -> None:
    async with rig(answer(status, {"error": {"code": "nope"}}), status_ok()) as r:
        with pytest.raises(Rejected) as caught:
            await r.client.fetch_status(VIDEO_ID)
    assert (len(r.provider.requests), caught.value.status_code) == (1, status)
    assert not caught.value.retryable


@pytest.mark.parametrize(
    "error",
    [timeout(httpx.ReadTimeout), timeout(httpx.ConnectTimeout), httpx.ConnectError("refused")],
    ids=["read-timeout", "connect-timeout", "connect-error"],
)
async def test_transport_failure_then_success_is_retried(error: Exception) -> None:
    async with rig(error, status_ok()) as r:
        found = await r.client.fetch_status(VIDEO_ID)
    assert (found.http_status, len(r.provider.requests)) == (200, 2)


async def test_timeout_on_every_attempt_raises_retryable_provider_unavailable() -> None:
    async with rig(timeout()) as r:
        with pytest.raises(ProviderUnavailable) as caught:
            await r.client.fetch_status(VIDEO_ID)
    assert (len(r.provider.requests), caught.value.status_code) == (3, None)
    assert caught.value.retryable


async def test_errors_quote_neither_the_url_nor_the_api_key() -> None:
    async with rig(httpx.ConnectError(f"cannot reach {BASE_URL} with {API_KEY}")) as r:
        with pytest.raises(ProviderUnavailable) as caught:
            await r.client.fetch_status(VIDEO_ID)
    assert BASE_URL not in str(caught.value)
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>gateway</html>"),
        answer(200, {"code": 500, "message": "upstream busy"}),
        httpx.Response(204),
    ],
    ids=["not-json", "apidot-envelope-error", "empty"],
)
async def test_answer_that_is_no_status_body_raises_retryable_bad_answer(
    response: httpx.Response,
) -> None:
    kind = APIDOT if b"code" in response.content else OPENAI
    async with rig(response, kind=kind) as r:
        with pytest.raises(BadAnswer) as caught:
            await r.client.fetch_status(STATUS_BODIES[kind][0])
    assert (caught.value.status_code, caught.value.retryable) == (response.status_code, True)


@pytest.mark.parametrize(
    ("kind", "body", "reason"),
    [
        (OPENAI, {"id": VIDEO_ID, "object": "video", "status": "melting"}, "unknown_status"),
        (EVOLINK, {"id": GATEWAY_ID, "status": "exploded"}, "unknown_status"),
        (APIDOT, {"code": 200, "data": {"task_id": GATEWAY_ID}}, "unknown_status"),
        (APIDOT, {"code": 200, "data": [GATEWAY_ID]}, "bad_field"),
        (EVOLINK, [GATEWAY_ID, "completed"], "not_object"),
    ],
    ids=["openai-status", "evolink-status", "apidot-no-status", "apidot-data", "array"],
)
async def test_json_status_body_that_does_not_normalize_is_answered_unrecognized(
    kind: WireFormat, body: object, reason: str
) -> None:
    async with rig(answer(200, body), kind=kind) as r:
        found = await r.client.fetch_status(STATUS_BODIES[kind][0])
    assert (found.observation, found.unrecognized, found.http_status) == (None, reason, 200)
    assert found.detail is not None
    assert orjson.loads(found.body) == body


async def test_unrecognized_body_about_another_task_raises_bad_answer() -> None:
    body = {"id": "task-someone-else", "status": "exploded"}
    async with rig(answer(200, body), kind=EVOLINK) as r:
        with pytest.raises(BadAnswer, match="another task"):
            await r.client.fetch_status(GATEWAY_ID)


async def test_answer_about_another_task_raises_bad_answer() -> None:
    async with rig(status_ok()) as r:
        with pytest.raises(BadAnswer, match="another task"):
            await r.client.fetch_status("video_someone_else")


# -- what a poll records ---------------------------------------------------------------


async def test_fetch_status_dates_result_urls_by_the_providers_lifetime() -> None:
    body = {"id": GATEWAY_ID, "status": "completed", "results": ["https://cdn.example/a.mp4"]}
    async with rig(answer(200, body), kind=EVOLINK, result_ttl_seconds=3600) as r:
        found = await r.client.fetch_status(GATEWAY_ID)
    assert found.observation is not None
    assert found.observation.extra["expires_at"] == (NOW + timedelta(hours=1)).isoformat()


async def test_fetch_status_uses_the_kinds_default_lifetime() -> None:
    files = ["https://cdn.example/a.mp4"]
    body = {"code": 200, "data": {"task_id": GATEWAY_ID, "status": "finished", "files": files}}
    async with rig(answer(200, body), kind=APIDOT) as r:
        found = await r.client.fetch_status(GATEWAY_ID)
    assert found.observation is not None
    assert found.observation.extra["expires_at"] == (NOW + timedelta(days=1)).isoformat()


async def test_fetch_status_records_an_openai_videos_content_paths() -> None:
    body = {"id": VIDEO_ID, "object": "video", "status": "completed", "expires_at": 1758945385}
    async with rig(answer(200, body)) as r:
        found = await r.client.fetch_status(VIDEO_ID)
    assert found.observation is not None
    assert found.observation.extra == {
        "content": {
            variant: f"/v1/videos/{VIDEO_ID}/content?variant={variant}"
            for variant in ("video", "thumbnail", "spritesheet")
        },
        "expires_at": "2025-09-27T03:56:25+00:00",
    }


async def test_aivideoapi_poll_reads_output_urls() -> None:
    url = "https://cdn.example/aiv.mp4"
    body = {"id": GATEWAY_ID, "status": "completed", "output": {"urls": [url]}}
    async with rig(answer(200, body), kind=AIVIDEOAPI) as r:
        found = await r.client.fetch_status(GATEWAY_ID)
    assert found.observation is not None
    assert (found.observation.state, found.observation.result_urls) == (State.SUCCEEDED, (url,))


# -- base URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "base_url", "path"),
    [
        (OPENAI, "https://api.example/v1", f"/v1/videos/{VIDEO_ID}"),
        (OPENAI, "https://api.example/v1/", f"/v1/videos/{VIDEO_ID}"),
        (OPENAI, "https://api.example", f"/v1/videos/{VIDEO_ID}"),
        (EVOLINK, "https://api.example/v1", f"/v1/tasks/{GATEWAY_ID}"),
        (EVOLINK, "https://api.example/gw/v1", f"/gw/v1/tasks/{GATEWAY_ID}"),
        (EVOLINK, "https://api.example/gw", f"/gw/v1/tasks/{GATEWAY_ID}"),
        (APIDOT, "https://api.example/v1", f"/v1/api/generate/status/{GATEWAY_ID}"),
    ],
    ids=[
        "openai-v1",
        "openai-v1-slash",
        "openai-bare",
        "evolink-v1",
        "evolink-prefix-v1",
        "evolink-prefix",
        "apidot-keeps-v1",
    ],
)
async def test_base_url_with_or_without_v1_reaches_the_same_status_path(
    kind: WireFormat, base_url: str, path: str
) -> None:
    async with rig(status_ok(kind), kind=kind, base_url=base_url) as r:
        await r.client.fetch_status(STATUS_BODIES[kind][0])
    assert r.provider.requests[0].url.path == path


@pytest.mark.parametrize(
    ("kind", "path"), [(OPENAI, "/v1/videos"), (EVOLINK, "/v1/videos/generations")], ids=str
)
async def test_base_url_ending_in_v1_submits_without_repeating_it(
    kind: WireFormat, path: str
) -> None:
    async with rig(answer(200, SUBMITTED[kind]), kind=kind, base_url="https://api.example/v1") as r:
        await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert r.provider.requests[0].url.path == path


# -- provider settings -----------------------------------------------------------------

ENV = {"TASKLEDGER_CALLBACK_SECRETS": "s", "TASKLEDGER_ADMIN_TOKEN": "t"}


def provider_from_environ(name: str, **variables: str) -> ProviderSettings:
    environ = {**ENV, "TASKLEDGER_PROVIDERS": name, **variables}
    provider = Settings.from_environ(environ).provider(name)
    assert provider is not None
    return provider


async def test_openai_base_url_as_the_sdk_takes_it_polls_the_videos_path() -> None:
    settings = provider_from_environ(
        "openai", TASKLEDGER_PROVIDER_OPENAI_BASE_URL="https://api.openai.com/v1/"
    )
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return status_ok()

    transport = httpx.MockTransport(handler)
    async with ProviderClients.open([settings], transport=transport) as clients:
        client = clients.get("openai")
        assert client is not None
        await client.fetch_status(VIDEO_ID)
    assert str(seen[0]) == f"https://api.openai.com/v1/videos/{VIDEO_ID}"


async def test_task_id_that_cannot_name_a_path_is_rejected_without_a_request() -> None:
    async with rig(status_ok()) as r:
        with pytest.raises(Rejected):
            await r.client.fetch_status("..")
    assert r.provider.requests == []


# -- submit ----------------------------------------------------------------------------

SUBMITTED: dict[WireFormat, dict[str, object]] = {
    OPENAI: {"id": VIDEO_ID, "object": "video", "status": "queued"},
    APIDOT: {"code": 200, "data": {"task_id": GATEWAY_ID, "status": "not_started"}},
    EVOLINK: {"id": GATEWAY_ID, "object": "video.generation.task", "status": "pending"},
    AIVIDEOAPI: {"code": 200, "msg": "success", "data": {"taskId": GATEWAY_ID}},
}
CALLBACK = "https://ledger.example/callbacks/abc"


@pytest.mark.parametrize(
    ("kind", "path", "body"),
    [
        (OPENAI, "/base/v1/videos", {"model": "sora-2", "prompt": "a cat", "seconds": "4"}),
        (
            APIDOT,
            "/base/api/generate/submit",
            {
                "model": "sora-2",
                "callback_url": CALLBACK,
                "input": {"prompt": "a cat", "seconds": "4"},
            },
        ),
        (
            EVOLINK,
            "/base/v1/videos/generations",
            {"model": "sora-2", "prompt": "a cat", "seconds": "4", "callback_url": CALLBACK},
        ),
    ],
    ids=str,
)
async def test_submit_posts_the_formats_body(
    kind: WireFormat, path: str, body: dict[str, object]
) -> None:
    async with rig(answer(200, SUBMITTED[kind]), kind=kind) as r:
        await r.client.submit("sora-2", {"prompt": "a cat", "seconds": "4"}, CALLBACK)
    sent = r.provider.requests[0]
    assert (sent.method, sent.url.path, orjson.loads(sent.content)) == ("POST", path, body)


@pytest.mark.parametrize("kind", list(SUBMITTED), ids=str)
async def test_submit_returns_the_providers_task_id(kind: WireFormat) -> None:
    async with rig(answer(200, SUBMITTED[kind]), kind=kind) as r:
        observation = await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert (observation.provider_task_id, observation.state) == (
        STATUS_BODIES[kind][0],
        State.QUEUED,
    )


@pytest.mark.parametrize("kind", list(SUBMITTED), ids=str)
@pytest.mark.parametrize("task_id", ["", "   ", "run-nul\u0000id"], ids=["empty", "blank", "nul"])
async def test_a_submit_answer_whose_task_id_cannot_be_kept_proves_nothing(
    kind: WireFormat, task_id: str
) -> None:
    """Neither kept as another id (a NUL read as U+FFFD) nor taken for a refusal: the
    task may exist at the provider, so the submission is unknown, never sent again."""
    answer_body = orjson.dumps(SUBMITTED[kind]).replace(
        orjson.dumps(STATUS_BODIES[kind][0]), orjson.dumps(task_id)
    )
    async with rig(httpx.Response(200, content=answer_body), kind=kind) as r:
        with pytest.raises(BadAnswer) as caught:
            await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert caught.value.retryable is False
    assert ("holds NUL" if "\0" in task_id else "empty or blank") in str(caught.value)


async def test_evolink_submit_keeps_the_credits_it_reserved() -> None:
    body = {**SUBMITTED[EVOLINK], "usage": {"billing_rule": "per_call", "credits_reserved": 7}}
    async with rig(answer(200, body), kind=EVOLINK) as r:
        observation = await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert observation.extra == {"cost_credits": 7}


async def test_submit_is_not_retried_after_a_read_timeout() -> None:
    async with rig(timeout(), answer(200, SUBMITTED[OPENAI])) as r:
        with pytest.raises(ProviderUnavailable) as caught:
            await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert (len(r.provider.requests), caught.value.retryable) == (1, False)


async def test_submit_is_not_retried_after_a_server_error() -> None:
    async with rig(answer(502), answer(200, SUBMITTED[OPENAI])) as r:
        with pytest.raises(ProviderUnavailable) as caught:
            await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert (len(r.provider.requests), caught.value.retryable) == (1, False)


async def test_submit_is_retried_after_a_connect_error() -> None:
    async with rig(httpx.ConnectError("refused"), answer(200, SUBMITTED[OPENAI])) as r:
        observation = await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert (observation.provider_task_id, len(r.provider.requests)) == (VIDEO_ID, 2)


async def test_submit_is_retried_after_the_rate_limit_pause() -> None:
    async with rig(answer(429, **{"Retry-After": "2"}), answer(200, SUBMITTED[OPENAI])) as r:
        observation = await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert observation.provider_task_id == VIDEO_ID
    assert r.limiter_time.sleeps == [pytest.approx(2.0)]


async def test_submit_is_not_retried_when_the_rate_limit_pause_is_too_long() -> None:
    async with rig(answer(429, **{"Retry-After": "600"}), answer(200, SUBMITTED[OPENAI])) as r:
        with pytest.raises(RateLimited):
            await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert len(r.provider.requests) == 1


async def test_submit_answer_that_does_not_parse_is_not_retryable() -> None:
    async with rig(answer(200, {"object": "video"})) as r:
        with pytest.raises(BadAnswer) as caught:
            await r.client.submit("sora-2", {"prompt": "a cat"}, None)
    assert not caught.value.retryable


# -- ProviderClients -------------------------------------------------------------------


def provider_settings(
    name: str, kind: WireFormat, base_url: str, *, concurrency: int = 8, rate: float = 5.0
) -> ProviderSettings:
    return ProviderSettings(
        name,
        kind,
        base_url=base_url,
        api_key=API_KEY,
        concurrency=concurrency,
        rate_limit_per_second=rate,
    )


async def test_clients_leave_out_providers_without_a_base_url() -> None:
    providers = [
        provider_settings("openai", OPENAI, BASE_URL),
        provider_settings("vidgo", APIDOT, ""),
    ]
    async with ProviderClients.open(providers) as clients:
        assert (clients.names, clients.get("vidgo")) == (("openai",), None)


async def test_clients_keep_concurrent_polls_within_the_providers_concurrency() -> None:
    in_flight, most = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return status_ok()

    settings = provider_settings("openai", OPENAI, BASE_URL, concurrency=2, rate=1000.0)
    transport = httpx.MockTransport(handler)
    async with ProviderClients.open([settings], transport=transport) as clients:
        client = clients.get("openai")
        assert client is not None
        await asyncio.gather(*(client.fetch_status(VIDEO_ID) for _ in range(8)))
    assert most == 2


async def test_real_transports_report_an_unreachable_provider_as_unavailable() -> None:
    """Polls (aiohttp's pool) and submits (httpcore's) both fail as retryable: nothing left."""
    settings = provider_settings("openai", OPENAI, f"http://127.0.0.1:{free_port()}")
    async with ProviderClients.open([settings], policy=RetryPolicy(attempts=1)) as clients:
        client = clients.get("openai")
        assert client is not None
        with pytest.raises(ProviderUnavailable) as polled:
            await client.fetch_status(VIDEO_ID)
        with pytest.raises(ProviderUnavailable) as submitted:
            await client.submit("sora-2", {"prompt": "a cat"}, None)
    assert (polled.value.retryable, submitted.value.retryable) == (True, True)


async def test_submits_open_a_new_connection_rather_than_reuse_one_idle_past_a_second() -> None:
    """A server may be closing a connection idle for its keep-alive time (5 s for uvicorn)
    just as a submit goes out on it; the submit would fail after sending and the task's
    creation be unknown. Submits therefore never reuse a connection idle past 1 s."""
    ports: list[int] = []

    async def create(request: Request) -> Response:
        assert request.client is not None
        ports.append(request.client.port)
        return JSONResponse({"id": VIDEO_ID, "object": "video", "status": "queued"})

    app = Starlette(routes=[Route("/v1/videos", create, methods=["POST"])])
    async with serve(app) as server:
        settings = provider_settings("openai", OPENAI, server)
        async with ProviderClients.open([settings]) as clients:
            client = clients.get("openai")
            assert client is not None
            await client.submit("sora-2", {"prompt": "a cat"}, None)
            await client.submit("sora-2", {"prompt": "a cat"}, None)  # at once: same connection
            await asyncio.sleep(SUBMIT_KEEPALIVE_SECONDS + 0.3)  # idle, but not to uvicorn's 5 s
            await client.submit("sora-2", {"prompt": "a cat"}, None)
    assert ports[0] == ports[1]
    assert ports[2] != ports[1]


# -- against the simulator -------------------------------------------------------------

SIM_REQUESTS: dict[WireFormat, dict[str, object]] = {
    OPENAI: {"prompt": "a cat", "seconds": "4", "size": "1280x720"},
    APIDOT: {"prompt": "a cat", "duration": 4, "aspect_ratio": "16:9"},
    EVOLINK: {"prompt": "a cat", "duration": 4, "aspect_ratio": "1280x720"},
}


async def test_clients_submit_and_poll_each_format_on_the_simulator() -> None:
    lifecycle = Lifecycle(min_duration_s=60, max_duration_s=120)
    app = create_app(SimConfig(api_key=API_KEY, lifecycle=lifecycle))
    async with serve(app) as server:
        providers = [provider_settings(k.value, k, f"{server}/{k.value}") for k in SIM_REQUESTS]
        async with ProviderClients.open(providers) as clients:
            for kind, request in SIM_REQUESTS.items():
                client = clients.get(kind.value)
                assert client is not None
                submitted = await client.submit("sora-2", request, None)
                found = await client.fetch_status(submitted.provider_task_id)
                assert found.http_status == 200
                assert found.observation.provider_task_id == submitted.provider_task_id
                assert found.observation.state in (State.QUEUED, State.RUNNING)
