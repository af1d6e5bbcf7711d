"""Result media over real HTTP: files matching the ground truth, signed URLs that expire, and
the download faults, each seen by an httpx client as a downloader would see it."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.types import Message

from simulator import Faults, Lifecycle, Simulator, Submission, create_app
from simulator.files import CHUNK_BYTES
from simulator.media import draw_fault
from tests.simulator.support import FakeClock, Running, make_config, running

SUCCEEDING = Lifecycle(min_duration_s=0.1, max_duration_s=0.2, failed_weight=0, cancelled_weight=0)
TTL_S = 600
EVOLINK = Submission("sora-2", {"duration": 4, "aspect_ratio": "1280x720"}, None)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@asynccontextmanager
async def serving(
    clock: FakeClock, faults: Faults | None = None, **config: Any
) -> AsyncIterator[Running]:
    """A simulator on loopback whose tasks all succeed within a second of the fake clock."""
    settings = make_config(lifecycle=SUCCEEDING, faults=faults, media_ttl_s=TTL_S, **config)
    async with running(settings, clock) as run:
        yield run


async def succeeded(run: Running, clock: FakeClock, fmt: str = "apidot") -> dict[str, Any]:
    """A new task of `fmt`, once it has succeeded: its truth as `/_sim/truth` tells it."""
    task_id = await run.submit(fmt)
    clock.advance(1.0)
    tasks = (await run.client.get("/_sim/truth")).json()["tasks"]
    return next(task for task in tasks if task["task_id"] == task_id)


def media(task: dict[str, Any], name: str = "video") -> dict[str, Any]:
    return next(item for item in task["media"] if item["name"] == name)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- files and their ground truth ------------------------------------------------------


async def test_fetched_video_is_an_mp4_whose_sha256_is_the_truths(clock: FakeClock) -> None:
    async with serving(clock) as run:
        task = await succeeded(run, clock)
        video = media(task)
        response = await run.client.get(video["url"])
    assert response.status_code == 200
    assert response.content[4:12] == b"ftypisom"
    assert sha256(response.content) == video["sha256"]
    assert (len(response.content), response.headers["content-type"]) == (4096, "video/mp4")
    assert task["result_urls"] == [video["url"]]


async def test_result_url_is_signed_under_the_simulators_own_media_prefix(
    clock: FakeClock,
) -> None:
    async with serving(clock) as run:
        task = await succeeded(run, clock, "evolink")
        body = (await run.status("evolink", task["task_id"])).json()
    expires = int(task["terminal_at"]) + TTL_S
    prefix = f"{run.url}/media/evolink/{task['task_id']}.mp4?expires={expires}&sig="
    assert body["results"] == task["result_urls"]
    assert body["results"][0].startswith(prefix)
    assert media(task)["expires_at"] == expires


@pytest.mark.parametrize("variant", ["thumbnail", "spritesheet"])
async def test_openai_image_variants_are_pngs_matching_the_truth(
    clock: FakeClock, variant: str
) -> None:
    async with serving(clock) as run:
        task = await succeeded(run, clock, "openai")
        response = await run.client.get(media(task, variant)["url"])
    assert response.content.startswith(PNG_MAGIC)
    assert response.headers["content-type"] == "image/png"
    assert sha256(response.content) == media(task, variant)["sha256"]


async def test_openai_content_defaults_to_the_video_and_needs_the_api_key(
    clock: FakeClock,
) -> None:
    async with serving(clock, api_key="sk-test") as run:
        task = await succeeded(run, clock, "openai")
        path = f"/openai/v1/videos/{task['task_id']}/content"
        video = await run.client.get(path)
        anonymous = await run.client.get(path, headers={"authorization": ""})
    assert sha256(video.content) == media(task)["sha256"]
    assert anonymous.status_code == 401


# -- expiry and signatures -------------------------------------------------------------


async def test_media_url_answers_403_once_expired(clock: FakeClock) -> None:
    async with serving(clock) as run:
        url = media(await succeeded(run, clock))["url"]
        clock.advance(TTL_S - 2)
        before = await run.client.get(url)
        clock.advance(2)
        after = await run.client.get(url)
    assert before.status_code == 200
    assert after.status_code == 403
    assert b"<Code>AccessDenied</Code>" in after.content


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: url[:-4] + ("0000" if not url.endswith("0000") else "1111"),
        lambda url: url.replace("expires=", "expires=9"),
        lambda url: url.partition("&sig=")[0],
    ],
    ids=["bad-sig", "later-expiry", "no-sig"],
)
async def test_media_url_with_a_bad_signature_answers_403(clock: FakeClock, tamper: Any) -> None:
    async with serving(clock) as run:
        url = media(await succeeded(run, clock))["url"]
        response = await run.client.get(tamper(url))
    assert response.status_code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in response.content


async def test_openai_expires_at_is_when_its_content_turns_410(clock: FakeClock) -> None:
    async with serving(clock) as run:
        task = await succeeded(run, clock, "openai")
        video = (await run.status("openai", task["task_id"])).json()
        clock.advance(video["expires_at"] - clock())
        gone = await run.client.get(media(task)["url"])
    assert video["expires_at"] == media(task)["expires_at"] == video["completed_at"] + TTL_S
    assert gone.status_code == 410


# -- faults, as a downloader sees them -------------------------------------------------


async def test_redirect_fault_points_at_a_private_address(clock: FakeClock) -> None:
    async with serving(clock, Faults(media_redirect_rate=1.0)) as run:
        video = media(await succeeded(run, clock))
        response = await run.client.get(video["url"])
    host = ipaddress.ip_address(urlsplit(response.headers["location"]).hostname or "")
    assert response.status_code == 302
    assert video["fault"] == {"kind": "redirect", "location": response.headers["location"]}
    assert host.is_loopback or host.is_link_local


async def test_truncated_fault_sends_half_then_closes(clock: FakeClock) -> None:
    async with serving(clock, Faults(media_truncated_rate=1.0)) as run:
        video = media(await succeeded(run, clock))
        received = bytearray()
        async with run.client.stream("GET", video["url"]) as response:
            with pytest.raises(httpx.RemoteProtocolError):
                await read_into(response, received)
    assert response.headers["content-length"] == str(video["size"])
    assert video["fault"] == {"kind": "truncated", "sent_bytes": video["size"] // 2}
    assert len(received) == video["size"] // 2


async def read_into(response: httpx.Response, received: bytearray) -> None:
    async for chunk in response.aiter_raw():
        received += chunk


async def test_500_fault_fails_the_first_requests_then_serves(clock: FakeClock) -> None:
    faults = Faults(media_500_rate=1.0, media_500_count=2)
    async with serving(clock, faults) as run:
        video = media(await succeeded(run, clock))
        answers = [await run.client.get(video["url"]) for _ in range(3)]
        stats = run.sim.stats()["downloads"]
    assert [answer.status_code for answer in answers] == [500, 500, 200]
    assert sha256(answers[-1].content) == video["sha256"]
    assert video["fault"] == {"kind": "error_500", "failures": 2}
    assert (stats["injected_500"], stats["served"]) == (2, 1)


async def test_slow_fault_trickles_the_whole_body(clock: FakeClock) -> None:
    faults = Faults(media_slow_rate=1.0, media_slow_s=0.3)
    async with serving(clock, faults) as run:
        video = media(await succeeded(run, clock))
        started = time.monotonic()
        response = await run.client.get(video["url"])
        elapsed = time.monotonic() - started
    assert sha256(response.content) == video["sha256"]
    assert video["fault"] == {"kind": "slow", "seconds": 0.3}
    assert elapsed >= 0.3 * 0.9  # the pauses add up to 0.3 s: a lower bound only


async def test_openai_content_suffers_its_videos_fault(clock: FakeClock) -> None:
    async with serving(clock, Faults(media_redirect_rate=1.0)) as run:
        task = await succeeded(run, clock, "openai")
        response = await run.client.get(media(task, "thumbnail")["url"])
    assert response.status_code == 302
    assert response.headers["location"] == media(task, "thumbnail")["fault"]["location"]


def test_faults_are_drawn_per_task_from_the_seed(clock: FakeClock) -> None:
    faults = Faults(
        media_redirect_rate=0.25, media_truncated_rate=0.3, media_500_rate=0.4, media_slow_rate=0.5
    )

    def kinds(seed: int) -> list[str | None]:
        sim = Simulator(make_config(lifecycle=SUCCEEDING, faults=faults, seed=seed), clock=clock)
        tasks = [sim.submit("evolink", EVOLINK) for _ in range(30)]
        predicted = [draw_fault(seed, task, faults) for task in tasks]
        assert [sim.media.fault(task) for task in tasks] == predicted
        return [fault.kind if fault else None for fault in predicted]

    assert kinds(3) == kinds(3)
    assert set(kinds(3)) == {"redirect", "truncated", "error_500", "slow", None}


def test_fault_is_drawn_when_the_task_is_submitted(clock: FakeClock) -> None:
    sim = Simulator(make_config(lifecycle=SUCCEEDING), clock=clock)
    before = sim.submit("evolink", EVOLINK)
    sim.update_faults({"media_slow_rate": 1.0})
    after = sim.submit("evolink", EVOLINK)
    clock.advance(1.0)
    truth = {task["task_id"]: task["media"][0]["fault"] for task in sim.truth()}
    assert truth[before.task_id] is None
    assert truth[after.task_id] == {"kind": "slow", "seconds": 2.0}


# -- large files -----------------------------------------------------------------------


async def test_large_video_is_streamed_in_bounded_chunks(clock: FakeClock) -> None:
    size = 64 * 1024 * 1024
    app = create_app(make_config(lifecycle=SUCCEEDING, media_bytes=size), clock=clock)
    sim: Simulator = app.state.simulator
    task = sim.submit("evolink", EVOLINK)
    clock.advance(1.0)
    url = urlsplit(sim.media.links.url(task))
    chunk_sizes: list[int] = []
    digest = hashlib.sha256()

    async def never_disconnects() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            chunk_sizes.append(len(message["body"]))
            digest.update(message["body"])

    tracemalloc.start()
    try:
        await app(http_scope(url.path, url.query), never_disconnects, send)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(chunk_sizes) == size
    assert max(chunk_sizes) <= CHUNK_BYTES
    assert peak < 8 * 1024 * 1024
    assert digest.hexdigest() == sim.truth()[0]["media"][0]["sha256"]


def http_scope(path: str, query: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 50000),
    }
