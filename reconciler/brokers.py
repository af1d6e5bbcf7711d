"""Sinks for broker endpoints: a notification published to a NATS JetStream subject or a
RabbitMQ exchange, reported delivered only once the broker holds it (PubAck, confirm).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import aio_pika
import nats.errors
import nats.js.errors
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelNotFoundEntity,
    DeliveryError,
    PublishError,
)
from nats.aio.client import Client as NatsClient
from nats.js.api import PubAck

from schemas.endpoint_urls import (
    AmqpTarget,
    EndpointUrlError,
    NatsTarget,
    parse_amqp_url,
    parse_nats_url,
)
from schemas.store.notifications import AttemptResult, DispatchJob

DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_RECONNECT_INTERVAL_SECONDS = 1.0
ERROR_MAX_CHARS = 300
CONTENT_TYPE = "application/json"
CONNECTION_NAME = "taskledger-relay"
# RabbitMQ's (and aio-pika's) user and password when a URL names none.
AMQP_DEFAULT_CREDENTIAL = "guest"

log = structlog.get_logger("taskledger.relay")

K = TypeVar("K")
T = TypeVar("T")


class BrokerFailure(Exception):
    """One publish did not reach the broker, or the broker refused it. The message is
    short and names the server (host:port), never a credential."""


class NatsSink:
    """Publishes to JetStream subjects; one connection per server and credentials.

    Delivered means a stream stored the message: `deliver` waits for JetStream's PubAck.
    `Nats-Msg-Id` is the webhook-id, so a resend inside the stream's duplicate window
    (two minutes unless the stream says otherwise) is dropped by JetStream and acked as a
    duplicate; the Standard Webhooks headers travel as NATS headers.

    A dropped connection is neither buffered nor retried in the background: the client
    closes, a publish waiting for its PubAck fails at once, and the next `deliver`
    connects again (refused at once while the server is down). Nothing waits longer than
    `timeout_seconds`.

    A failure comes back with `retry_at` None and `status_code` None: the relay sets the
    schedule (`dataclasses.replace(result, retry_at=...)`). `deliver` raises only on a bug.
    """

    def __init__(self, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.timeout_seconds = timeout_seconds
        self._connections: _Shared[NatsTarget, _NatsConnection] = _Shared(
            self._connect, lambda connection: connection.usable
        )

    async def deliver(
        self, job: DispatchJob, body: bytes, headers: dict[str, str]
    ) -> AttemptResult:
        started = time.perf_counter()
        try:
            target = parse_nats_url(job.endpoint.url)
            async with asyncio.timeout(self.timeout_seconds):
                ack = await self._publish(target, body, nats_headers(job, headers))
        except (BrokerFailure, EndpointUrlError) as exc:
            return _failed(started, str(exc))
        except TimeoutError:
            return _failed(started, f"no PubAck within {self.timeout_seconds:g} s")
        answer = f"stream {ack.stream} seq {ack.seq}" + (" (duplicate)" if ack.duplicate else "")
        return AttemptResult(delivered=True, latency_ms=_elapsed_ms(started), answer=answer)

    async def aclose(self) -> None:
        await self._connections.aclose(lambda connection: connection.close())

    async def _publish(self, target: NatsTarget, body: bytes, headers: dict[str, str]) -> PubAck:
        connection = await self._connections.get(dataclasses.replace(target, subject=""))
        js = connection.client.jetstream(timeout=self.timeout_seconds)
        try:
            return await connection.unless_lost(js.publish(target.subject, body, headers=headers))
        except nats.js.errors.NoStreamResponseError as exc:
            raise BrokerFailure(
                f"no JetStream stream holds subject {target.subject} on {target.server}"
            ) from exc
        except nats.js.errors.APIError as exc:
            raise BrokerFailure(
                f"JetStream on {target.server} refused the message: {exc.description}"
            ) from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise BrokerFailure(
                f"publish to NATS at {target.server} failed: {_reason(exc)}"
            ) from exc

    async def _connect(self, server: NatsTarget) -> _NatsConnection:
        """A client that gives up at once: no reconnects, no retries of the first connect
        (nats-py tries a server `max_reconnect_attempts + 1` times even then)."""
        connection = _NatsConnection(NatsClient(), server.server)
        try:
            await connection.client.connect(
                servers=[_nats_server_url(server)],
                name=CONNECTION_NAME,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=max(1, round(self.timeout_seconds)),
                error_cb=connection.on_error,
                disconnected_cb=connection.on_lost,
                closed_cb=connection.on_lost,
                user=server.username if server.password is not None else None,
                password=server.password,
                token=server.username if server.password is None else None,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await connection.close()
            reason = _reason(connection.last_error or exc)
            raise BrokerFailure(f"cannot connect to NATS at {server.server}: {reason}") from exc
        return connection


class _NatsConnection:
    """A nats-py client and its callbacks: errors are logged (the last kept: a failed
    connect raises only "no servers available"), a drop is noticed at once."""

    def __init__(self, client: NatsClient, server: str) -> None:
        self.client = client
        self.server = server
        self.last_error: Exception | None = None
        self.lost = asyncio.Event()

    @property
    def usable(self) -> bool:
        return not (self.lost.is_set() or self.client.is_closed)

    async def unless_lost(self, work: Awaitable[T]) -> T:
        """`work`'s result, or a failure as soon as the connection drops (nats-py leaves a
        request waiting for its timeout)."""
        task, lost = asyncio.ensure_future(work), asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        raise BrokerFailure(f"the connection to NATS at {self.server} dropped before a PubAck")

    async def on_error(self, exc: Exception) -> None:
        self.last_error = exc
        log.warning("nats_connection_failed", server=self.server, error=_reason(exc))

    async def on_lost(self) -> None:
        self.lost.set()

    async def close(self) -> None:
        if not self.client.is_closed:
            await self.client.close()


@dataclasses.dataclass(frozen=True, slots=True)
class _Route:
    """A channel with publisher confirms to one exchange, on a robust connection."""

    connection: AbstractRobustConnection
    channel: AbstractRobustChannel
    exchange: AbstractExchange


class AmqpSink:
    """Publishes to RabbitMQ exchanges: a robust connection per server, vhost and
    credentials; a channel with publisher confirms per exchange (the broker closes a
    channel that names a missing exchange, so one bad endpoint spoils no other).

    Delivered means the broker confirmed the message (`Basic.Ack`): persistent, with
    `mandatory`, so an unroutable one (no queue bound for its routing key) is returned and
    is a failure. `message_id` is the webhook-id; the Standard Webhooks headers are the
    message's headers; the routing key is the endpoint's, else the event type.

    While the connection is down (aio-pika reconnects it every
    `reconnect_interval_seconds` in the background) a publish fails at once; nothing
    waits longer than `timeout_seconds`. Failures as for `NatsSink`: `retry_at` None, the
    relay sets the schedule. A lost confirm may hide a message the broker has: consumers
    deduplicate on `message_id` (at least once).
    """

    def __init__(
        self,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        reconnect_interval_seconds: float = DEFAULT_RECONNECT_INTERVAL_SECONDS,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.reconnect_interval_seconds = reconnect_interval_seconds
        self._connections: _Shared[AmqpTarget, AbstractRobustConnection] = _Shared(
            self._connect, lambda connection: not connection.is_closed
        )
        self._routes: _Shared[AmqpTarget, _Route] = _Shared(
            self._open_route, lambda route: not route.channel.is_closed
        )

    async def deliver(
        self, job: DispatchJob, body: bytes, headers: dict[str, str]
    ) -> AttemptResult:
        started = time.perf_counter()
        try:
            target = parse_amqp_url(job.endpoint.url)
            async with asyncio.timeout(self.timeout_seconds):
                await self._publish(target, amqp_message(job, body, headers), job.event_type)
        except (BrokerFailure, EndpointUrlError) as exc:
            return _failed(started, str(exc))
        except TimeoutError:
            return _failed(started, f"no confirm within {self.timeout_seconds:g} s")
        return AttemptResult(delivered=True, latency_ms=_elapsed_ms(started), answer="confirmed")

    async def aclose(self) -> None:
        await self._routes.aclose(lambda route: route.channel.close())
        await self._connections.aclose(lambda connection: connection.close())

    async def _publish(self, target: AmqpTarget, message: aio_pika.Message, event: str) -> None:
        """Publish and wait for the confirm. aio-pika fails with its CONNECTION_EXCEPTIONS
        (AMQP and OS errors, RuntimeError for a closed channel or connection)."""
        connection = await self._connections.get(_amqp_server(target))
        if not connection.connected.is_set():
            raise BrokerFailure(f"RabbitMQ at {target.server} is unreachable (reconnecting)")
        route = await self._routes.get(dataclasses.replace(target, routing_key=None))
        key = target.routing_key_for(event)
        try:
            await route.exchange.publish(message, key, mandatory=True)
        except CONNECTION_EXCEPTIONS as exc:
            raise _amqp_failure(target, key, exc) from exc

    async def _open_route(self, target: AmqpTarget) -> _Route:
        connection = await self._connections.get(_amqp_server(target))
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.get_exchange(target.exchange, ensure=False)
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerFailure(
                f"cannot open a channel on RabbitMQ at {target.server}: {_reason(exc)}"
            ) from exc
        return _Route(connection, channel, exchange)

    async def _connect(self, server: AmqpTarget) -> AbstractRobustConnection:
        try:
            return await aio_pika.connect_robust(
                host=server.host,
                port=server.port,
                virtualhost=server.vhost,
                ssl=server.tls,
                timeout=self.timeout_seconds,
                reconnect_interval=self.reconnect_interval_seconds,
                client_properties={"connection_name": CONNECTION_NAME},
                login=AMQP_DEFAULT_CREDENTIAL if server.username is None else server.username,
                password=AMQP_DEFAULT_CREDENTIAL if server.password is None else server.password,
            )
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerFailure(
                f"cannot connect to RabbitMQ at {server.server}: {_reason(exc)}"
            ) from exc


def nats_headers(job: DispatchJob, headers: Mapping[str, str]) -> dict[str, str]:
    """The NATS headers of a notification: the Standard Webhooks ones and `Nats-Msg-Id`."""
    return {
        "content-type": CONTENT_TYPE,
        **headers,
        "Nats-Msg-Id": headers.get("webhook-id", job.msg_id),
    }


def amqp_message(job: DispatchJob, body: bytes, headers: Mapping[str, str]) -> aio_pika.Message:
    """The AMQP message of a notification: persistent, its id the webhook-id."""
    return aio_pika.Message(
        body,
        headers=dict(headers),
        content_type=CONTENT_TYPE,
        message_id=headers.get("webhook-id", job.msg_id),
        type=job.event_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def _amqp_failure(target: AmqpTarget, key: str, exc: BaseException) -> BrokerFailure:
    if isinstance(exc, PublishError):
        return BrokerFailure(
            f"no queue is bound to exchange {target.exchange} for routing key {key} "
            f"on {target.server}"
        )
    if isinstance(exc, ChannelNotFoundEntity):
        return BrokerFailure(
            f"no exchange {target.exchange} in vhost {target.vhost} on {target.server}"
        )
    if isinstance(exc, DeliveryError):
        return BrokerFailure(f"RabbitMQ at {target.server} refused the message (nack)")
    return BrokerFailure(f"publish to RabbitMQ at {target.server} failed: {_reason(exc)}")


def _amqp_server(target: AmqpTarget) -> AmqpTarget:
    """The part of a target that picks a connection: server, vhost, credentials, TLS."""
    return dataclasses.replace(target, exchange="", routing_key=None)


class _Shared(Generic[K, T]):
    """Connections (or channels) by key, made once for every concurrent caller; one that
    failed to open or has closed since is made again by the next `get`."""

    def __init__(self, make: Callable[[K], Awaitable[T]], alive: Callable[[T], bool]) -> None:
        self._make = make
        self._alive = alive
        self._made: dict[K, asyncio.Future[T]] = {}

    async def get(self, key: K) -> T:
        made = self._made.get(key)
        if made is None or not self._usable(made):
            made = self._made[key] = asyncio.ensure_future(self._make(key))
        return await asyncio.shield(made)

    async def aclose(self, close: Callable[[T], Awaitable[Any]]) -> None:
        made, self._made = list(self._made.values()), {}
        for future in made:
            future.cancel()
        await asyncio.gather(*made, return_exceptions=True)
        for future in made:
            if not future.cancelled() and future.exception() is None:
                await close(future.result())

    def _usable(self, made: asyncio.Future[T]) -> bool:
        if not made.done():
            return True
        if made.cancelled() or made.exception() is not None:
            return False
        return self._alive(made.result())


def _nats_server_url(server: NatsTarget) -> str:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"nats://{host}:{server.port}"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _failed(started: float, error: str) -> AttemptResult:
    return AttemptResult(
        delivered=False, latency_ms=_elapsed_ms(started), error=error[:ERROR_MAX_CHARS]
    )
