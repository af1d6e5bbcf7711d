"""Sinks for broker endpoints: a notification published to a NATS JetStream subject or a
RabbitMQ exchange, reported delivered only once the broker holds it (PubAck, confirm). Every
connection goes to an address the notify address policy allows, checked as it is made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import aio_pika
import aiormq
import nats.errors
import nats.js.errors
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    ConnectionParameter,
)
from aio_pika.connection import make_url
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    AMQPConnectionError,
    ChannelNotFoundEntity,
    DeliveryError,
    PublishError,
)
from nats.aio.client import Client as NatsClient
from nats.js.api import PubAck
from yarl import URL

from schemas.addresses import AddressPolicy, BlockedURL
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
    `timeout_seconds`. Each connect resolves the server's host again and goes only to
    addresses `policy` allows; a refused host fails the delivery (`refused: ...`).

    A failure comes back with `retry_at` None and `status_code` None: the relay sets the
    schedule (`dataclasses.replace(result, retry_at=...)`). `deliver` raises only on a bug.
    """

    def __init__(
        self, *, policy: AddressPolicy, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.policy = policy
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
        (nats-py tries a server `max_reconnect_attempts + 1` times even then). It connects
        to the checked addresses of the host, never to the name (which could resolve anew);
        TLS, if the server asks for it, still verifies the name (`tls_hostname`)."""
        addresses = await _checked_addresses(self.policy, server.host, server.port)
        connection = _NatsConnection(NatsClient(), server.server)
        try:
            await connection.client.connect(
                servers=[_nats_server_url(address, server.port) for address in addresses],
                dont_randomize=True,
                tls_hostname=server.host,
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
    waits longer than `timeout_seconds`. Every connect, the background ones included,
    resolves the server's host again and goes only to an address `policy` allows
    (`_CheckedTransport`). Failures as for `NatsSink`: `retry_at` None, the relay sets the
    schedule. A lost confirm may hide a message the broker has: consumers deduplicate on
    `message_id` (at least once).
    """

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        reconnect_interval_seconds: float = DEFAULT_RECONNECT_INTERVAL_SECONDS,
    ) -> None:
        self.policy = policy
        self.timeout_seconds = timeout_seconds
        self.reconnect_interval_seconds = reconnect_interval_seconds
        self._connections: _Shared[AmqpTarget, _CheckedConnection] = _Shared(
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
            refused = connection.transport_factory.refused
            if refused is not None:
                raise BrokerFailure(f"refused: {refused}")
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

    async def _connect(self, server: AmqpTarget) -> _CheckedConnection:
        """What `aio_pika.connect_robust` makes, its connects made by `_CheckedTransport`."""
        url = make_url(
            host=server.host,
            port=server.port,
            virtualhost=server.vhost,
            ssl=server.tls,
            login=AMQP_DEFAULT_CREDENTIAL if server.username is None else server.username,
            password=AMQP_DEFAULT_CREDENTIAL if server.password is None else server.password,
        )
        connection = _CheckedConnection(
            url,
            transport_factory=_CheckedTransport(self.policy),
            reconnect_interval=self.reconnect_interval_seconds,
            client_properties={"connection_name": CONNECTION_NAME},
        )
        try:
            await connection.connect(timeout=self.timeout_seconds)
        except CONNECTION_EXCEPTIONS as exc:
            await connection.close()
            if isinstance(exc, _RefusedAddress):
                raise BrokerFailure(f"refused: {exc.blocked}") from exc
            raise BrokerFailure(
                f"cannot connect to RabbitMQ at {server.server}: {_reason(exc)}"
            ) from exc
        return connection


class _RefusedAddress(AMQPConnectionError):
    """The server's host resolved to an address the policy refuses. An AMQP connection
    error: aio-pika hands those to the caller of `connect` (or retries them later)."""

    def __init__(self, blocked: BlockedURL) -> None:
        super().__init__(str(blocked))
        self.blocked = blocked


class _CheckedTransport(aiormq.TransportFactory):
    """aiormq's TCP or TLS connection to an AMQP server, made to an address `policy`
    allows: the host is resolved and every address checked before each connect, then the
    connection goes to a checked address (never to the name, which could resolve anew);
    TLS still verifies the certificate for the host's name (`server_hostname`). The last
    refusal is kept (None once a connect gets past the check) to say why a publish fails."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.refused: BlockedURL | None = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider: aiormq.SSLContextProvider = kwargs.pop("ssl_context_provider")
        host, port = url.host or "", url.port
        try:
            addresses = await self.policy.resolve(host, port or 0)
        except BlockedURL as exc:
            self.refused = exc
            raise _RefusedAddress(exc) from exc
        self.refused = None
        tls = await provider.get_context() if url.scheme == "amqps" else None
        failure: OSError | None = None
        for address in addresses:  # in the resolver's order, as asyncio tries a name's
            try:
                return await _open(address, port, tls, host, **kwargs)
            except OSError as exc:
                failure = exc
        raise AMQPConnectionError(*(failure.args if failure else ())) from failure


async def _open(
    address: str, port: int | None, tls: ssl.SSLContext | None, name: str, **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream to `address`; over TLS, the certificate is checked for `name`."""
    if tls is None:
        return await asyncio.open_connection(address, port, **kwargs)
    return await asyncio.open_connection(address, port, ssl=tls, server_hostname=name, **kwargs)


def _as_given(value: Any) -> Any:
    return value


class _CheckedConnection(aio_pika.RobustConnection):
    """A robust connection whose every connect, the background reconnects included, goes
    through its `transport_factory` (aio-pika hands aiormq only the parameters it names)."""

    PARAMETERS = (
        *aio_pika.RobustConnection.PARAMETERS,
        ConnectionParameter(name="transport_factory", parser=_as_given, is_kwarg=True),
    )

    def __init__(self, url: URL, *, transport_factory: _CheckedTransport, **kwargs: Any) -> None:
        super().__init__(url, transport_factory=transport_factory, **kwargs)
        self.transport_factory = transport_factory


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


async def _checked_addresses(policy: AddressPolicy, host: str, port: int) -> list[str]:
    """Every address `host` resolves to, if `policy` allows each; else a failure."""
    try:
        return await policy.resolve(host, port)
    except BlockedURL as exc:
        raise BrokerFailure(f"refused: {exc}") from exc


def _nats_server_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"nats://{host}:{port}"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _failed(started: float, error: str) -> AttemptResult:
    return AttemptResult(
        delivered=False, latency_ms=_elapsed_ms(started), error=error[:ERROR_MAX_CHARS]
    )
