"""Brokers for tests: a JetStream nats-server of the test's own (stopped and started again
on the same port and store), and the local RabbitMQ (scratch exchanges, its app restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import nats
import nats.errors
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from tests.support.servers import free_port

NATS_SERVER = shutil.which("nats-server")
RABBITMQCTL = shutil.which("rabbitmqctl")
RABBITMQ_HOST = "127.0.0.1"
RABBITMQ_PORT = 5672
RABBITMQ_URL = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/"
START_WITHIN_SECONDS = 30.0
STOP_WITHIN_SECONDS = 15.0
POLL_INTERVAL_SECONDS = 0.05


class JetStreamServer:
    """A `nats-server -js` on a loopback port, its store in `store_dir`; `stop` and `start`
    keep both, so streams and their messages outlive a restart."""

    def __init__(self, binary: str, store_dir: Path) -> None:
        self.binary = binary
        self.store_dir = store_dir
        self.port = free_port()
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the server and return once JetStream answers."""
        log = (self.store_dir.parent / "nats-server.log").open("ab")
        with log:
            self._process = await asyncio.create_subprocess_exec(
                self.binary,
                *("-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        await self._wait_answering()

    async def stop(self) -> None:
        """Stop the server (SIGTERM: it shuts JetStream down cleanly) and wait for it."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=STOP_WITHIN_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def add_stream(self, name: str, subjects: list[str]) -> None:
        """A file-backed stream (JetStream's defaults, a two-minute duplicate window)."""
        client = await connect_once(self.url)
        try:
            await client.jetstream().add_stream(StreamConfig(name=name, subjects=subjects))
        finally:
            await client.close()

    async def _wait_answering(self) -> None:
        deadline = time.monotonic() + START_WITHIN_SECONDS
        while time.monotonic() < deadline:
            if self._process is None or self._process.returncode is not None:
                raise RuntimeError(f"nats-server exited; see {self.store_dir.parent}")
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                client = await connect_once(self.url)
                try:
                    await client.jetstream().account_info()
                    return
                finally:
                    await client.close()
            await asyncio.sleep(POLL_INTERVAL_SECONDS)
        raise TimeoutError(f"nats-server did not answer within {START_WITHIN_SECONDS:g} s")


async def connect_once(url: str) -> NatsClient:
    """A NATS client that tries `url` once, quietly (nats-py retries a refused first
    connect every two seconds unless told not to)."""
    return await nats.connect(
        url,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0,
        connect_timeout=1,
        error_cb=_ignore,
    )


async def _ignore(exc: Exception) -> None:
    """nats-py logs every connection error at ERROR unless given a callback."""


@contextlib.asynccontextmanager
async def jetstream_server(workdir: Path) -> AsyncIterator[JetStreamServer]:
    """A started JetStream server storing under `workdir`; stopped when the block exits."""
    if NATS_SERVER is None:
        raise RuntimeError("nats-server is not on PATH")
    server = JetStreamServer(NATS_SERVER, workdir / "jetstream")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# -- RabbitMQ ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScratchExchange:
    """A durable topic exchange of the test's own, and its durable queue when bound."""

    exchange: str
    queue: str | None

    def url(self, routing_key: str | None = None) -> str:
        key = "" if routing_key is None else f"&routing_key={routing_key}"
        return f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/?exchange={self.exchange}{key}"


async def rabbitmq_answers() -> bool:
    """Whether the local RabbitMQ takes an AMQP connection now."""
    try:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=2)
    except (AMQPError, OSError, TimeoutError):
        return False
    await connection.close()
    return True


@contextlib.asynccontextmanager
async def scratch_exchange(binding: str | None = "#") -> AsyncIterator[ScratchExchange]:
    """A fresh exchange with a queue bound by `binding` (None: no queue, nothing routes);
    both deleted when the block exits."""
    token = secrets.token_hex(6)
    scratch = ScratchExchange(
        f"taskledger-test-{token}", None if binding is None else f"taskledger-test-{token}"
    )
    async with _admin() as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            scratch.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        if scratch.queue is not None and binding is not None:
            queue = await channel.declare_queue(scratch.queue, durable=True)
            await queue.bind(exchange, binding)
    try:
        yield scratch
    finally:
        await _delete(scratch)


async def drain_queue(name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message now in queue `name`, taken off it."""
    found = []
    async with _admin() as connection:
        queue = await (await connection.channel()).get_queue(name)
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            found.append(message)
    return found


async def rabbitmqctl(*args: str) -> None:
    """Run `rabbitmqctl` with `args`; raise with its output when it fails."""
    if RABBITMQCTL is None:
        raise RuntimeError("rabbitmqctl is not on PATH")
    process = await asyncio.create_subprocess_exec(
        RABBITMQCTL, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=START_WITHIN_SECONDS)
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {output.decode(errors='replace')}")


async def stop_rabbitmq() -> None:
    """Stop the RabbitMQ application (the node stays up): every AMQP connection drops."""
    await rabbitmqctl("stop_app")


async def start_rabbitmq() -> None:
    """Start the RabbitMQ application and return once it takes AMQP connections again."""
    await rabbitmqctl("start_app")
    deadline = time.monotonic() + START_WITHIN_SECONDS
    while not await rabbitmq_answers():
        if time.monotonic() > deadline:
            raise TimeoutError(f"RabbitMQ did not answer within {START_WITHIN_SECONDS:g} s")
        await asyncio.sleep(POLL_INTERVAL_SECONDS)


@contextlib.asynccontextmanager
async def _admin() -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    try:
        yield connection
    finally:
        await connection.close()


async def _delete(scratch: ScratchExchange) -> None:
    async with _admin() as connection:
        channel = await connection.channel()
        if scratch.queue is not None:
            await channel.queue_delete(scratch.queue)
        await channel.exchange_delete(scratch.exchange)
