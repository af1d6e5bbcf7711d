"""Brokers for tests: a JetStream nats-server of the test's own (stopped and started again
on the same port and store); scratch exchanges on the local RabbitMQ, which no test stops;
and a RabbitMQ node of the test's own for the tests that restart one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import aio_pika
import nats
import nats.errors
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from tests.support.servers import free_fixed_port, free_port

NATS_SERVER = shutil.which("nats-server")
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
        await terminate(process, group=False)

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
    """A durable topic exchange of the test's own, and its durable queue when bound, on the
    broker at `broker` (the local RabbitMQ unless told)."""

    exchange: str
    queue: str | None
    broker: str = RABBITMQ_URL

    def url(self, routing_key: str | None = None) -> str:
        key = "" if routing_key is None else f"&routing_key={routing_key}"
        return f"{self.broker}?exchange={self.exchange}{key}"


async def rabbitmq_answers(broker: str = RABBITMQ_URL) -> bool:
    """Whether the RabbitMQ at `broker` (the local one unless told) takes an AMQP
    connection now."""
    try:
        connection = await aio_pika.connect(broker, timeout=2)
    except (AMQPError, OSError, TimeoutError):
        return False
    await connection.close()
    return True


@contextlib.asynccontextmanager
async def scratch_exchange(
    binding: str | None = "#", broker: str = RABBITMQ_URL
) -> AsyncIterator[ScratchExchange]:
    """A fresh exchange with a queue bound by `binding` (None: no queue, nothing routes) on
    the RabbitMQ at `broker`; both deleted when the block exits."""
    token = secrets.token_hex(6)
    scratch = ScratchExchange(
        f"taskledger-test-{token}", None if binding is None else f"taskledger-test-{token}", broker
    )
    async with _admin(broker) as connection:
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


async def drain_queue(
    name: str, broker: str = RABBITMQ_URL
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message now in queue `name` on the RabbitMQ at `broker`, taken off it."""
    found = []
    async with _admin(broker) as connection:
        queue = await (await connection.channel()).get_queue(name)
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            found.append(message)
    return found


@contextlib.asynccontextmanager
async def _admin(broker: str) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(broker, timeout=5)
    try:
        yield connection
    finally:
        await connection.close()


async def _delete(scratch: ScratchExchange) -> None:
    async with _admin(scratch.broker) as connection:
        channel = await connection.channel()
        if scratch.queue is not None:
            await channel.queue_delete(scratch.queue)
        await channel.exchange_delete(scratch.exchange)


# -- a RabbitMQ node of the test's own -------------------------------------------------------


def _rabbitmq_script(name: str) -> str | None:
    """RabbitMQ's own script `name`. Debian's on PATH is a link to a wrapper that switches to
    the `rabbitmq` user, resets HOME (so the node would read the shared node's cookie) and
    logs where it chooses; the real script sits beside that wrapper."""
    found = shutil.which(name)
    if found is None:
        return None
    script = Path(found).resolve().parent / name
    return str(script) if script.is_file() else None


RABBITMQ_SERVER = _rabbitmq_script("rabbitmq-server")
# The OS user Debian's package runs RabbitMQ as; a node started by root runs as it.
RABBITMQ_USER = "rabbitmq"
NODE_START_WITHIN_SECONDS = 60.0


class _Account(TypedDict, total=False):
    """Popen's arguments that run a process as another user."""

    user: int
    group: int
    extra_groups: list[int]


class RabbitMQNode:
    """A RabbitMQ node of its own: its own node name, AMQP and distribution ports on loopback
    (below the ephemeral range, so a restart finds them free), cookie, configuration, data and
    logs, all in `workdir`, and no plugins. Only its own `rabbitmqctl -n` reaches it, so a
    test may stop it without touching the local RabbitMQ others use."""

    def __init__(self, server: str, workdir: Path) -> None:
        self.server = server
        self.ctl = str(Path(server).parent / "rabbitmqctl")
        self.workdir = workdir
        self.name = f"taskledger-test-{secrets.token_hex(4)}@localhost"
        self.port = free_fixed_port()
        self.dist_port = free_fixed_port()
        while self.dist_port == self.port:
            self.dist_port = free_fixed_port()
        self._process: asyncio.subprocess.Process | None = None
        self._account = _account()
        self._prepare()

    @property
    def url(self) -> str:
        """Its AMQP URL (the default vhost, the `guest` user loopback lets in)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Start the node and return once it takes AMQP connections."""
        log = (self.workdir / "rabbitmq-server.out").open("ab")
        with log:
            self._process = await asyncio.create_subprocess_exec(
                self.server,
                cwd=self.workdir,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_account(),
            )
        deadline = time.monotonic() + NODE_START_WITHIN_SECONDS
        # The port first, quietly: aio-pika logs every refused connection at ERROR.
        while not await self._listening() or not await rabbitmq_answers(self.url):
            if self._process.returncode is not None:
                raise RuntimeError(f"rabbitmq-server exited: {self._output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"RabbitMQ node {self.name} did not answer within "
                    f"{NODE_START_WITHIN_SECONDS:g} s: {self._output()}"
                )
            await asyncio.sleep(POLL_INTERVAL_SECONDS)

    async def stop(self) -> None:
        """Stop the node (SIGTERM: rabbitmq-server stops it cleanly) and wait for it; kill
        what it started if it takes too long."""
        process, self._process = self._process, None
        await terminate(process, group=True)

    async def stop_app(self) -> None:
        """Stop the RabbitMQ application (the node stays up): every AMQP connection drops."""
        await self.rabbitmqctl("stop_app")

    async def start_app(self) -> None:
        """Start the RabbitMQ application and return once it takes AMQP connections again."""
        await self.rabbitmqctl("start_app")
        deadline = time.monotonic() + START_WITHIN_SECONDS
        while not await rabbitmq_answers(self.url):
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ did not answer within {START_WITHIN_SECONDS:g} s")
            await asyncio.sleep(POLL_INTERVAL_SECONDS)

    async def rabbitmqctl(self, *args: str) -> None:
        """Run `rabbitmqctl -n <this node>` with `args`; raise with its output when it fails."""
        process = await asyncio.create_subprocess_exec(
            self.ctl,
            *("-n", self.name, *args),
            cwd=self.workdir,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **self._as_account(),
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout=START_WITHIN_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {self.name} {' '.join(args)}: {output.decode(errors='replace')}"
            )

    async def _listening(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _prepare(self) -> None:
        """The node's cookie, configuration and (empty) plugin list, owned by whoever runs it."""
        files = {
            ".erlang.cookie": secrets.token_hex(16),
            "rabbitmq.conf": "log.file.level = warning\nlog.console = false\n",
            "enabled_plugins": "[].\n",
            "rabbitmq-env.conf": "",  # in place of the system's, which names the shared node
        }
        for name, text in files.items():
            (self.workdir / name).write_text(text)
        (self.workdir / ".erlang.cookie").chmod(0o400)
        if self._account is not None:
            for path in (self.workdir, *self.workdir.iterdir()):
                os.chown(path, *self._account)

    def _as_account(self) -> _Account:
        """Popen's arguments that run a process as the node's account (its group alone)."""
        if self._account is None:
            return {}
        uid, gid = self._account
        return {"user": uid, "group": gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        """The environment with every RabbitMQ and Erlang setting replaced by the node's own."""
        keep = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_")) and key not in {"HOME", "NODENAME"}
        }
        work = self.workdir
        return {
            **keep,
            "HOME": str(work),  # its cookie
            "RABBITMQ_CONF_ENV_FILE": str(work / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(work / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(work / "conf.d"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(work / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(work / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(work / "mnesia"),
            "RABBITMQ_LOG_BASE": str(work / "log"),
            "RABBITMQ_PID_FILE": str(work / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _output(self) -> str:
        text = (self.workdir / "rabbitmq-server.out").read_text(errors="replace")
        return text[-2000:].strip() or f"see {self.workdir}"


def _account() -> tuple[int, int] | None:
    """Who runs the node (user and group ids): the `rabbitmq` user when these tests run as
    root and it exists, as Debian's package runs RabbitMQ; None, whoever runs the tests."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(RABBITMQ_USER)
    except KeyError:
        return None
    return account.pw_uid, account.pw_gid


@contextlib.asynccontextmanager
async def rabbitmq_node() -> AsyncIterator[RabbitMQNode]:
    """A started RabbitMQ node of the caller's own, in a fresh directory; the node stopped
    and the directory deleted when the block exits, however it exits."""
    if RABBITMQ_SERVER is None:
        raise RuntimeError("rabbitmq-server is not installed")
    # Not under pytest's tmp_path: its directories are closed to the `rabbitmq` user.
    workdir = Path(tempfile.mkdtemp(prefix="taskledger-rabbitmq-"))
    try:
        node = RabbitMQNode(RABBITMQ_SERVER, workdir)
        try:
            await node.start()
            yield node
        finally:
            await node.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def terminate(process: asyncio.subprocess.Process | None, *, group: bool) -> None:
    """SIGTERM `process` (a server that stops cleanly on it) and wait for it; past
    `STOP_WITHIN_SECONDS`, kill it (with `group`, its whole process group: what it started)."""
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=STOP_WITHIN_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        await process.wait()
