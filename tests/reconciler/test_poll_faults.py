"""Requests no HTTP library can make (a base URL IDNA cannot encode, an API key no header
can carry, a port out of range), in a reconciler round against the ledger and a provider
on loopback: each fails its own poll or submit, recorded and logged once with the
provider's name; the round, the other tasks and the process go on. And the archiver's
fetches of URLs and with credentials alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path

import pytest
import structlog.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.archiver import Archiver
from reconciler.clients import ProviderClients
from reconciler.fetch import FetchLimits, SafeFetcher
from reconciler.metrics import ReconcilerMetrics
from reconciler.process import Reconciler
from reconciler.retry import RetryPolicy
from schemas.addresses import AddressPolicy
from schemas.ledger import Poll
from schemas.media.storage import LocalStore
from schemas.settings import ArchiveSettings, ProviderSettings, Settings
from schemas.states import State
from schemas.store import LedgerStore, NewTask
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock
from tests.support.servers import serve

API_KEY = "sk-test"
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(range(256)) * 64
NO_RETRIES = RetryPolicy(attempts=1, base_delay_seconds=0.0)


@dataclass
class Provider:
    """An OpenAI-style provider on loopback: its videos run; it keeps every request's
    method and path."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def status(request: Request) -> Response:
            self.seen.append((request.method, request.url.path))
            video = request.path_params["video"]
            return JSONResponse({"id": video, "object": "video", "status": "in_progress"})

        async def create(request: Request) -> Response:
            self.seen.append((request.method, request.url.path))
            return JSONResponse({"id": "video_new", "object": "video", "status": "queued"})

        return Starlette(
            routes=[
                Route("/v1/videos/{video}", status),
                Route("/v1/videos", create, methods=["POST"]),
            ]
        )


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    found = Provider()
    async with serve(found.app()) as url:
        yield found, url


def settings_of(*providers: ProviderSettings) -> Settings:
    named = {provider.name: provider for provider in providers}
    return Settings(callback_secrets=("s",), admin_token="t", providers=named)


def openai(base_url: str, api_key: str = API_KEY) -> ProviderSettings:
    return ProviderSettings(
        "openai", WireFormat.OPENAI, base_url=base_url, api_key=api_key, expected_seconds=1
    )


async def one_round(settings: Settings, store: LedgerStore, clock: FakeClock) -> list[dict]:
    """One pass of every provider's due tasks on the production sessions (aiohttp's for
    polls, httpx's for submits); the log lines it wrote."""
    async with ProviderClients.open(settings.providers.values(), policy=NO_RETRIES) as clients:
        reconciler = Reconciler(settings, store, clients, clock=clock, policy=NO_RETRIES)
        with structlog.testing.capture_logs() as logs:
            await reconciler.run_pass()
    return logs


async def last_poll_error(store: LedgerStore, ref: str) -> str | None:
    polls = (await store.timeline(ref)).polls
    return polls[-1].error if polls else None


def unsendable_lines(logs: list[dict]) -> list[tuple[str, str]]:
    return [
        (line["provider"], line["error"])
        for line in logs
        if line["event"] == "provider_request_unsendable"
    ]


# -- polls --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_url",
    ["http://a..b", f"http://{'a' * 64}.example"],
    ids=["empty-label", "label-over-63"],
)
async def test_a_base_url_idna_cannot_encode_fails_its_polls_not_the_round(
    store: LedgerStore, clock: FakeClock, provider: tuple[Provider, str], bad_url: str
) -> None:
    seen, url = provider
    broken = ProviderSettings("apidot", WireFormat.APIDOT, base_url=bad_url, expected_seconds=1)
    settings = settings_of(openai(url), broken)
    fine = await store.register(NewTask("openai", provider_task_id="video_1", expected_seconds=1))
    stuck = [
        await store.register(NewTask("apidot", provider_task_id=f"t-{n}", expected_seconds=1))
        for n in range(2)
    ]
    clock.advance(2)
    logs = await one_round(settings, store, clock)
    polled = await store.get(fine.ref)
    assert polled is not None
    assert (polled.state, seen.seen) == ("running", [("GET", "/v1/videos/video_1")])
    for row in stuck:
        task = await store.get(row.ref)
        assert task is not None
        assert task.poll_attempts == 1
        assert task.next_poll_at is not None
        assert task.next_poll_at > clock()
        assert await last_poll_error(store, row.ref) == (
            "apidot: request cannot be sent (UnicodeError)"
        )
    # Logged once for the provider, not once a task (and never with the URL).
    assert unsendable_lines(logs) == [("apidot", "UnicodeError")]
    assert not any(bad_url in str(line) for line in logs)


@pytest.mark.parametrize("bad_key", ["sk-\x01bad", "sk-\nX-Injected: 1"], ids=["soh", "newline"])
async def test_an_api_key_no_header_can_carry_fails_its_polls_unsent(
    store: LedgerStore, clock: FakeClock, provider: tuple[Provider, str], bad_key: str
) -> None:
    seen, url = provider
    settings = settings_of(openai(url, api_key=bad_key))
    rows = [
        await store.register(NewTask("openai", provider_task_id=f"video_{n}", expected_seconds=1))
        for n in range(3)
    ]
    clock.advance(2)
    logs = await one_round(settings, store, clock)
    assert seen.seen == []  # nothing reached the provider
    for row in rows:
        error = await last_poll_error(store, row.ref)
        assert error == "openai: request cannot be sent (ValueError)"
    assert unsendable_lines(logs) == [("openai", "ValueError")]
    assert not any("bad" in str(line) or "Injected" in str(line) for line in logs)


async def test_an_unsendable_poll_is_asked_again_at_the_next_round_once_due(
    store: LedgerStore, clock: FakeClock
) -> None:
    settings = settings_of(openai("http://a..b"))
    row = await store.register(NewTask("openai", provider_task_id="video_1", expected_seconds=1))
    clock.advance(2)
    await one_round(settings, store, clock)
    task = await store.get(row.ref)
    assert task is not None
    assert task.next_poll_at is not None
    clock.now = task.next_poll_at + timedelta(seconds=1)
    logs = await one_round(settings, store, clock)
    again = await store.get(row.ref)
    assert again is not None
    assert again.poll_attempts == 2
    assert unsendable_lines(logs) == [("openai", "UnicodeError")]


# -- submits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "api_key", "error"),
    [
        (None, "sk-\u00e9t\u00e9", "UnicodeEncodeError"),  # httpx encodes headers as ASCII
        ("http://127.0.0.1:99999", API_KEY, "OverflowError"),  # the socket's port
    ],
    ids=["key-not-ascii", "port-out-of-range"],
)
async def test_a_submit_that_cannot_be_made_stays_pending_unsent(
    store: LedgerStore,
    clock: FakeClock,
    provider: tuple[Provider, str],
    base_url: str | None,
    api_key: str,
    error: str,
) -> None:
    """Nothing left: the task is not `unknown` (that is for a request that may have
    created a task) but pending, sent once the setting is mended; its neighbour is polled."""
    seen, url = provider
    sending = ProviderSettings(
        "evolink",
        WireFormat.OPENAI,
        base_url=base_url or url,
        api_key=api_key,
        expected_seconds=1,
    )
    settings = settings_of(openai(url), sending)
    row = await store.register(
        NewTask(provider="evolink", model="sora-2", request={"prompt": "x"}, submit=True)
    )
    fine = await store.register(NewTask("openai", provider_task_id="video_1", expected_seconds=1))
    clock.advance(2)
    logs = await one_round(settings, store, clock)
    task = await store.get(row.ref)
    assert task is not None
    assert (task.submission, task.provider_task_id) == ("pending", None)
    assert task.next_poll_at is not None
    assert task.next_poll_at > clock()
    assert seen.seen == [("GET", "/v1/videos/video_1")]  # no POST
    polled = await store.get(fine.ref)
    assert polled is not None
    assert polled.state == "running"
    assert unsendable_lines(logs) == [("evolink", error)]


# -- the archiver's fetches -----------------------------------------------------------------


@dataclass
class Media:
    """A media host on loopback (and an OpenAI-style content route): it keeps the paths
    asked for."""

    seen: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def video(request: Request) -> Response:
            self.seen.append(request.url.path)
            return Response(MP4, media_type="video/mp4")

        return Starlette(
            routes=[Route("/v.mp4", video), Route("/v1/videos/{task_id}/content", video)]
        )


@pytest.fixture
async def media() -> AsyncIterator[tuple[Media, str]]:
    host = Media()
    async with serve(host.app()) as url:
        yield host, url


@pytest.fixture
def loopback() -> AddressPolicy:
    return AddressPolicy(allow_http=True, allowed_networks=(ip_network("127.0.0.0/8"),))


def archiver_for(
    ledger: LedgerStore, tmp_path: Path, clock: FakeClock, policy: AddressPolicy, openai: dict
) -> Archiver:
    settings = ArchiveSettings(url=str(tmp_path / "media"), concurrency=2, allow_http=True)
    providers = {
        "apidot": ProviderSettings("apidot", WireFormat.APIDOT, archive=True),
        "openai": ProviderSettings("openai", WireFormat.OPENAI, archive=True, **openai),
    }
    return Archiver(
        settings,
        providers,
        ledger,
        LocalStore(tmp_path / "media"),
        SafeFetcher(policy, FetchLimits(max_bytes=1 << 20, read_timeout_seconds=5)),
        owner="archiver-test",
        clock=clock,
        metrics=ReconcilerMetrics(),
        stopping=asyncio.Event(),
    )


async def succeeded(
    ledger: LedgerStore,
    clock: FakeClock,
    provider: str,
    *urls: str,
    task_id: str = "t-1",
    content: bool = False,
) -> str:
    """A task of `provider` that succeeded with outputs at `urls` (and, for OpenAI, its
    video at its content route when `content`)."""
    task = await ledger.register(NewTask(provider=provider, provider_task_id=task_id))
    extra: dict[str, object] = {"expires_at": (clock() + timedelta(hours=1)).isoformat()}
    if content:
        extra["content"] = {"video": f"/v1/videos/{task_id}/content?variant=video"}
    observation = Observation(task_id, State.SUCCEEDED, 100, urls, extra=extra)
    await ledger.ingest([Poll(task.ref, clock(), None, observation=observation, http_status=200)])
    return task.ref


async def states(ledger: LedgerStore, ref: str) -> dict[str, tuple[str, str | None]]:
    return {a.name: (a.state, a.last_error) for a in await ledger.artifacts(ref)}


@pytest.mark.parametrize(
    ("openai", "error"),
    [
        ({"api_key": "sk-\u00e9t\u00e9"}, "protocol: the request to 127.0.0.1 cannot be made"),
        ({"base_url": "http://[::1"}, "no_host: the URL cannot be parsed"),
    ],
    ids=["key-not-ascii", "base-url-unparsable"],
)
async def test_an_output_whose_fetch_cannot_be_made_fails_alone(
    archive_ledger: LedgerStore,
    tmp_path: Path,
    clock: FakeClock,
    media: tuple[Media, str],
    loopback: AddressPolicy,
    openai: dict,
    error: str,
) -> None:
    host, url = media
    settings = {"base_url": url, "api_key": API_KEY} | openai
    worker = archiver_for(archive_ledger, tmp_path, clock, loopback, settings)
    cdn = url.replace("127.0.0.1", "localhost") + "/v.mp4"  # another origin: no key goes there
    try:
        ref = await succeeded(archive_ledger, clock, "openai", cdn, content=True)
        await worker.run_batch()
    finally:
        await worker.fetcher.aclose()
    found = await states(archive_ledger, ref)
    assert found["output-1"] == ("archived", None)  # its neighbour, fetched without the key
    state, last_error = found["video"]
    assert state == "failed"
    assert last_error is not None
    assert last_error.startswith(error)
    assert host.seen == ["/v.mp4"]  # the content route was never asked


async def test_a_result_url_whose_host_idna_cannot_decode_fails_alone(
    archive_ledger: LedgerStore,
    tmp_path: Path,
    clock: FakeClock,
    media: tuple[Media, str],
    loopback: AddressPolicy,
) -> None:
    host, url = media
    worker = archiver_for(archive_ledger, tmp_path, clock, loopback, {})
    try:
        ref = await succeeded(archive_ledger, clock, "apidot", "http://xn--a.example/v.mp4")
        other = await succeeded(archive_ledger, clock, "apidot", f"{url}/v.mp4", task_id="t-2")
        await worker.run_batch()
    finally:
        await worker.fetcher.aclose()
    assert await states(archive_ledger, ref) == {
        "output-1": ("failed", "no_host: the URL cannot be parsed")
    }
    assert await states(archive_ledger, other) == {"output-1": ("archived", None)}
    assert host.seen == ["/v.mp4"]
