"""Helpers for simulator tests: a capturing callback receiver, a running simulator, a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from simulator import Faults, Lifecycle, SimConfig, Simulator, create_app
from tests.support.servers import serve

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AUTH = {"authorization": "Bearer sk-test"}
FAST = Lifecycle(min_duration_s=0.15, max_duration_s=0.3)
WAIT_SECONDS = 5.0
SUBMITS: dict[str, tuple[str, Callable[[str | None], dict[str, Any]]]] = {
    "openai": (
        "/openai/v1/videos",
        lambda _: {"model": "sora-2", "prompt": "a cat", "seconds": "4"},
    ),
    "apidot": (
        "/apidot/api/generate/submit",
        lambda url: {"model": "sora-2-official", "callback_url": url, "input": {"prompt": "a cat"}},
    ),
    "evolink": (
        "/evolink/v1/videos/generations",
        lambda url: {"model": "sora-2", "prompt": "a cat", "duration": 4, "callback_url": url},
    ),
}
STATUS_PATHS = {
    "openai": "/openai/v1/videos/{}",
    "apidot": "/apidot/api/generate/status/{}",
    "evolink": "/evolink/v1/tasks/{}",
}


@dataclass(frozen=True)
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny callback endpoint recording every request; answers `statuses` in turn, then 200."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Captured] = field(default_factory=list)
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append(Captured(request.url.path, dict(request.headers), body))
        self.arrived.set()
        return Response("ok", self.statuses.pop(0) if self.statuses else 200)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.endpoint, methods=["POST"])])

    async def wait_for(self, count: int) -> list[Captured]:
        """The requests received, once there are `count` of them (within WAIT_SECONDS)."""
        async with asyncio.timeout(WAIT_SECONDS):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.requests


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Running:
    url: str
    sim: Simulator
    client: httpx.AsyncClient

    async def submit(self, fmt: str, callback_url: str | None = None) -> str:
        path, body = SUBMITS[fmt]
        response = await self.client.post(path, json=body(callback_url))
        response.raise_for_status()
        data = response.json()
        return str(data["data"]["task_id"] if fmt == "apidot" else data["id"])

    async def status(self, fmt: str, task_id: str) -> httpx.Response:
        return await self.client.get(STATUS_PATHS[fmt].format(task_id))

    async def wait_terminal(self, fmt: str, task_id: str) -> list[dict[str, Any]]:
        """Poll until the task ends; returns every body seen."""
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT_SECONDS):
            while not seen or not truth_of(self.sim, task_id)["terminal"]:
                seen.append((await self.status(fmt, task_id)).json())
                await asyncio.sleep(0.02)
        seen.append((await self.status(fmt, task_id)).json())
        return seen


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Return once `predicate()` holds; fail after WAIT_SECONDS."""
    for _ in range(int(WAIT_SECONDS / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not met in time")


def truth_of(sim: Simulator, task_id: str) -> dict[str, Any]:
    return next(item for item in sim.truth() if item["task_id"] == task_id)


def make_config(
    receiver: Receiver | None = None,
    *,
    faults: Faults | None = None,
    lifecycle: Lifecycle = FAST,
    **overrides: Any,
) -> SimConfig:
    webhook_url = f"{receiver.url}/webhooks/openai" if receiver else None
    settings: dict[str, Any] = {"webhook_secret": SECRET, "time_scale": 0.01, **overrides}
    return SimConfig(
        webhook_url=webhook_url, lifecycle=lifecycle, faults=faults or Faults(), **settings
    )


@asynccontextmanager
async def running(
    config: SimConfig, clock: Callable[[], float] | None = None
) -> AsyncIterator[Running]:
    """A simulator served on loopback, with a client holding a bearer key."""
    app = create_app(config, clock=clock)
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=WAIT_SECONDS) as client,
    ):
        yield Running(url, app.state.simulator, client)


@asynccontextmanager
async def receiving(statuses: Iterable[int] = ()) -> AsyncIterator[Receiver]:
    receiver = Receiver(statuses=list(statuses))
    async with serve(receiver.app()) as url:
        receiver.url = url
        yield receiver
