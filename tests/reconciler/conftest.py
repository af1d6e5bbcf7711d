"""Fixtures the reconciler's tests share: the brokers, a name table in place of DNS, a
ledger whose providers archive their outputs, and a media source that drips its body."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.settings import ProviderSettings
from schemas.store import LedgerStore
from schemas.wire import WireFormat
from tests.conftest import FakeClock
from tests.support.brokers import (
    NATS_SERVER,
    RABBITMQ_SERVER,
    JetStreamServer,
    RabbitMQNode,
    jetstream_server,
    rabbitmq_answers,
    rabbitmq_node,
)
from tests.support.databases import unavailable

STREAM = "TASKLEDGER_EVENTS"
# A dripping source sends a byte this often (far inside any read timeout of the tests) and
# promises this many: over an hour of body, more than any test waits for.
DRIP_EVERY_SECONDS = 0.05
DRIP_BYTES = 100_000


def missing(what: str) -> None:
    """A broker this machine lacks: a skip on a laptop, a failure in CI (CI has them)."""
    unavailable(what, f"{what}, and CI must run the broker tests")


@pytest.fixture
async def jetstream(tmp_path: Path) -> AsyncIterator[JetStreamServer]:
    """A JetStream nats-server of the test's own, with `STREAM` on the events' subjects."""
    if NATS_SERVER is None:
        missing("nats-server is not on PATH")
    async with jetstream_server(tmp_path) as server:
        await server.add_stream(STREAM, ["taskledger.events.>"])
        yield server


@pytest.fixture
async def rabbitmq() -> None:
    """The local RabbitMQ, which must answer."""
    if not await rabbitmq_answers():
        missing("no RabbitMQ answers on 127.0.0.1:5672")


@pytest.fixture
async def own_rabbitmq() -> AsyncIterator[RabbitMQNode]:
    """A RabbitMQ node of the test's own, which it may stop (the local one others use, never)."""
    if RABBITMQ_SERVER is None:
        missing("rabbitmq-server is not installed")
    async with rabbitmq_node() as node:
        yield node


class Names:
    """The running loop's DNS, answered from a table for the names given, as usual for the
    rest. An answer is a list of addresses, an exception to raise, or `HANG`; a name given
    several answers gets them in turn, the last one repeated. `asked` lists the lookups of
    the names in the table."""

    HANG = "hang"

    def __init__(self, original: Callable[..., Any]) -> None:
        self.original = original
        self.answers: dict[str, list[Any]] = {}
        self.asked: list[str] = []
        self.never = asyncio.Event()

    def answer(self, name: str, *answers: Any) -> None:
        self.answers[name] = list(answers)

    async def getaddrinfo(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        turns = self.answers.get(host)
        if turns is None:
            return await self.original(host, port, *args, **kwargs)
        self.asked.append(host)
        answer = turns.pop(0) if len(turns) > 1 else turns[0]
        if answer == self.HANG:
            await self.never.wait()
        if isinstance(answer, BaseException):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answer]


@pytest.fixture
async def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    loop = asyncio.get_running_loop()
    table = Names(loop.getaddrinfo)
    monkeypatch.setattr(loop, "getaddrinfo", table.getaddrinfo)
    return table


@pytest.fixture
async def archive_ledger(engine: AsyncEngine, clock: FakeClock) -> AsyncIterator[LedgerStore]:
    """A ledger on both backends whose `apidot` and `openai` tasks' outputs are archived."""
    readers = {
        "apidot": ProviderSettings("apidot", WireFormat.APIDOT, archive=True).reader,
        "openai": ProviderSettings("openai", WireFormat.OPENAI, archive=True).reader,
    }
    store = LedgerStore(engine, clock, readers)
    yield store
    await store.close()


class Dripper:
    """A raw HTTP server on loopback whose every answer promises a video of `DRIP_BYTES`
    and sends it a byte every `DRIP_EVERY_SECONDS`: no read waits long enough to time out,
    yet the body takes over an hour. `stop` ends every drip (the connections close)."""

    def __init__(self) -> None:
        self.url = ""
        self.requests = 0
        self._stopped = asyncio.Event()
        self._answering: set[asyncio.Task[Any]] = set()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._answering.add(task)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                head = f"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {DRIP_BYTES}"
                writer.write(head.encode() + b"\r\n\r\n")
                await self._drip(writer)
        finally:
            writer.close()
            self._answering.discard(task)

    async def _drip(self, writer: asyncio.StreamWriter) -> None:
        for _ in range(DRIP_BYTES):
            writer.write(b"\x00")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=DRIP_EVERY_SECONDS)
            if self._stopped.is_set():
                return

    async def stop(self) -> None:
        self._stopped.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._answering)


@pytest.fixture
async def dripper() -> AsyncIterator[Dripper]:
    source = Dripper()
    server = await asyncio.start_server(source.answer, "127.0.0.1", 0)
    source.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        try:
            yield source
        finally:
            await source.stop()
