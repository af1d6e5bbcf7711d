"""The archiver through its real parts: the ledger on both backends, the address-checked
fetcher against a media server on loopback, and the local store."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from reconciler.archiver import Archiver
from reconciler.fetch import FetchLimits, SafeFetcher
from reconciler.metrics import ReconcilerMetrics
from reconciler.retry import RetryPolicy
from schemas.addresses import AddressPolicy
from schemas.ledger import Poll
from schemas.media.storage import LocalStore, content_key
from schemas.settings import ArchiveSettings, ProviderSettings
from schemas.states import State
from schemas.store import LedgerStore, NewTask
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock
from tests.support.servers import serve

MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(range(256)) * 64
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 512
API_KEY = "sk-archive-test"


@dataclass
class Media:
    """A media host's behaviour, and what it saw."""

    failures_left: int = 0
    seen_auth: dict[str, str | None] = field(default_factory=dict)

    def app(self) -> Starlette:
        async def video(request: Request) -> Response:
            self.seen_auth[request.url.path] = request.headers.get("authorization")
            if self.failures_left:
                self.failures_left -= 1
                return Response("busy", status_code=500)
            return Response(MP4, media_type="video/mp4")

        async def content(request: Request) -> Response:
            self.seen_auth[request.url.path] = request.headers.get("authorization")
            if request.headers.get("authorization") != f"Bearer {API_KEY}":
                return Response("no key", status_code=401)
            variant = request.query_params.get("variant")
            body, kind = (MP4, "video/mp4") if variant == "video" else (PNG, "image/png")
            return Response(body, media_type=kind)

        async def html(_: Request) -> Response:
            return Response(b"<html>expired</html>", media_type="video/mp4")

        async def metadata(_: Request) -> Response:
            return RedirectResponse("http://169.254.169.254/latest/meta-data/", 302)

        return Starlette(
            routes=[
                Route("/v.mp4", video),
                Route("/v1/videos/{task_id}/content", content),
                Route("/page.mp4", html),
                Route("/hop.mp4", metadata),
            ]
        )


@pytest.fixture
async def media() -> AsyncIterator[tuple[Media, str]]:
    host = Media()
    async with serve(host.app()) as url:
        yield host, url


@pytest.fixture
def ledger(archive_ledger: LedgerStore) -> LedgerStore:
    return archive_ledger


Made = tuple[Archiver, LocalStore, ReconcilerMetrics]


@pytest.fixture
async def archivers(
    ledger: LedgerStore, tmp_path: Path, clock: FakeClock, media: tuple[Media, str]
) -> AsyncIterator[Made]:
    """An archiver on the ledger, the media host and a local store; its fetcher closed after."""
    made = archiver(ledger, tmp_path, clock, media[1])
    yield made
    await made[0].fetcher.aclose()


def archiver(ledger: LedgerStore, tmp_path: Path, clock: FakeClock, base_url: str) -> Made:
    settings = ArchiveSettings(url=str(tmp_path / "media"), concurrency=2, allow_http=True)
    providers = {
        "apidot": ProviderSettings("apidot", WireFormat.APIDOT, archive=True),
        "openai": ProviderSettings(
            "openai", WireFormat.OPENAI, base_url=base_url, api_key=API_KEY, archive=True
        ),
    }
    policy = AddressPolicy(allow_http=True, allowed_networks=(ip_network("127.0.0.0/8"),))
    fetcher = SafeFetcher(policy, FetchLimits(max_bytes=1 << 20, read_timeout_seconds=5))
    store = LocalStore(tmp_path / "media")
    metrics = ReconcilerMetrics()
    worker = Archiver(
        settings,
        providers,
        ledger,
        store,
        fetcher,
        owner="archiver-test",
        clock=clock,
        metrics=metrics,
        stopping=asyncio.Event(),
        policy=RetryPolicy(base_delay_seconds=2.0, max_delay_seconds=10.0, jitter=0.0),
    )
    return worker, store, metrics


async def succeeded(
    ledger: LedgerStore,
    clock: FakeClock,
    *urls: str,
    expires_in: float = 600,
    provider: str = "apidot",
    extra: dict[str, object] | None = None,
) -> str:
    task = await ledger.register(NewTask(provider=provider, provider_task_id="t-1"))
    expires_at = clock() + timedelta(seconds=expires_in)
    result = {"expires_at": expires_at.isoformat(), **(extra or {})}
    observation = Observation("t-1", State.SUCCEEDED, 100, urls, extra=result)
    await ledger.ingest([Poll(task.ref, clock(), None, observation=observation, http_status=200)])
    return task.ref


async def test_an_output_is_archived_under_its_sha256(
    ledger: LedgerStore, clock: FakeClock, media: tuple[Media, str], archivers: Made
) -> None:
    _, url = media
    worker, store, metrics = archivers
    ref = await succeeded(ledger, clock, f"{url}/v.mp4?sig=s3cret")
    assert await worker.run_batch() == 1
    (artifact,) = await ledger.artifacts(ref)
    digest = hashlib.sha256(MP4).hexdigest()
    assert (artifact.state, artifact.sha256, artifact.size) == ("archived", digest, len(MP4))
    assert (artifact.content_type, artifact.source_host) == ("video/mp4", "127.0.0.1")
    assert artifact.storage_key == content_key(digest)
    assert b"".join([chunk async for chunk in store.read(content_key(digest))]) == MP4
    assert metrics.archive_bytes.labels("apidot")._value.get() == len(MP4)


async def test_a_failure_is_retried_after_a_backoff_then_archived(
    ledger: LedgerStore, clock: FakeClock, media: tuple[Media, str], archivers: Made
) -> None:
    host, url = media
    host.failures_left = 1
    worker, _, _ = archivers
    ref = await succeeded(ledger, clock, f"{url}/v.mp4")
    await worker.run_batch()
    (artifact,) = await ledger.artifacts(ref)
    assert (artifact.state, artifact.attempts) == ("pending", 1)
    assert artifact.last_error is not None
    assert "500" in artifact.last_error
    assert await worker.run_batch() == 0  # not due yet
    clock.advance(2)
    await worker.run_batch()
    (artifact,) = await ledger.artifacts(ref)
    assert (artifact.state, artifact.attempts, artifact.last_error) == ("archived", 2, None)


async def test_a_source_failing_until_it_expires_is_missed_with_the_reason(
    ledger: LedgerStore, clock: FakeClock, media: tuple[Media, str], archivers: Made
) -> None:
    host, url = media
    host.failures_left = 100
    worker, _, metrics = archivers
    ref = await succeeded(ledger, clock, f"{url}/v.mp4", expires_in=4)
    for _ in range(5):
        await worker.run_batch()
        clock.advance(2)
    (artifact,) = await ledger.artifacts(ref)
    assert artifact.state == "missed"
    assert artifact.last_error is not None
    assert artifact.last_error.startswith("the source expired before it was archived")
    assert "500" in artifact.last_error
    assert metrics.archive_missed.labels("apidot")._value.get() == 1


async def test_an_output_found_expired_is_missed_without_a_fetch(
    ledger: LedgerStore, clock: FakeClock, media: tuple[Media, str], archivers: Made
) -> None:
    host, url = media
    worker, _, _ = archivers
    ref = await succeeded(ledger, clock, f"{url}/v.mp4", expires_in=10)
    clock.advance(11)
    await worker.run_batch()
    (artifact,) = await ledger.artifacts(ref)
    assert artifact.state == "missed"
    assert host.seen_auth == {}


async def test_a_redirect_to_the_metadata_address_is_refused_and_recorded(
    ledger: LedgerStore, clock: FakeClock, media: tuple[Media, str], archivers: Made
) -> None:
    _, url = media
    worker, _, metrics = archivers
    ref = await succeeded(ledger, clock, f"{url}/hop.mp4")
    await worker.run_batch()
    (artifact,) = await ledger.artifacts(ref)
    assert artifact.state == "failed"
    assert artifact.last_error is not None
    assert "169.254.169.254" in artifact.last_error
    assert "hop.mp4" not in artifact.last_error  # a URL's path and token are never kept
    assert metrics.archive_failures.labels("apidot", "blocked_address")._value.get() == 1


async def test_bytes_that_are_not_the_media_they_claim_fail(
    ledger: LedgerStore, clock: FakeClock, media: tuple[Media, str], archivers: Made
) -> None:
    _, url = media
    worker, store, _ = archivers
    ref = await succeeded(ledger, clock, f"{url}/page.mp4")
    await worker.run_batch()
    (artifact,) = await ledger.artifacts(ref)
    assert artifact.state == "failed"
    assert artifact.storage_key is None
    assert artifact.last_error is not None
    assert "not a video or image" in artifact.last_error
    assert list(store.spool_dir.glob("*")) == []  # the spool file went too


async def test_openai_content_is_fetched_with_the_key_and_a_cdn_url_without(
    ledger: LedgerStore, clock: FakeClock, media: tuple[Media, str], archivers: Made
) -> None:
    host, url = media
    worker, _, _ = archivers
    content = {v: f"/v1/videos/t-1/content?variant={v}" for v in ("video", "thumbnail")}
    cdn = url.replace("127.0.0.1", "localhost") + "/v.mp4"
    ref = await succeeded(ledger, clock, cdn, provider="openai", extra={"content": content})
    await worker.run_batch()
    states = {a.name: (a.state, a.content_type) for a in await ledger.artifacts(ref)}
    assert states == {
        "video": ("archived", "video/mp4"),
        "thumbnail": ("archived", "image/png"),
        "output-1": ("archived", "video/mp4"),
    }
    assert host.seen_auth["/v1/videos/t-1/content"] == f"Bearer {API_KEY}"
    assert host.seen_auth["/v.mp4"] is None


async def test_an_unconfigured_provider_is_retried_not_dropped(
    ledger: LedgerStore, clock: FakeClock, media: tuple[Media, str], archivers: Made
) -> None:
    _, url = media
    worker, _, _ = archivers
    worker = replace_providers(worker, {})
    ref = await succeeded(ledger, clock, f"{url}/v.mp4")
    await worker.run_batch()
    (artifact,) = await ledger.artifacts(ref)
    assert artifact.state == "pending"
    assert artifact.last_error == "provider 'apidot' is not configured"


def replace_providers(worker: Archiver, providers: dict[str, ProviderSettings]) -> Archiver:
    worker.providers = providers
    return worker


def test_a_bad_archive_url_stops_the_reconciler_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from reconciler.__main__ import main

    monkeypatch.setenv("TASKLEDGER_CALLBACK_SECRETS", "c" * 32)
    monkeypatch.setenv("TASKLEDGER_ADMIN_TOKEN", "a" * 32)
    monkeypatch.setenv("TASKLEDGER_ARCHIVE_URL", "ftp://archive.example.com/media")
    assert main() == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("reconciler: ")
    assert "TASKLEDGER_ARCHIVE_URL" in line
