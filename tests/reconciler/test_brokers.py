"""The broker sinks against real brokers (a JetStream nats-server of the test's own, the
local RabbitMQ, a RabbitMQ node of the test's own for the restart), through a broker restart;
and the broker endpoint URLs they read."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from ipaddress import ip_network
from typing import Any, Protocol

import pytest
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg

from reconciler.brokers import AmqpSink, NatsSink
from schemas.addresses import AddressPolicy
from schemas.endpoint_urls import (
    AmqpTarget,
    EndpointUrlError,
    NatsTarget,
    kind_of,
    parse_broker_url,
    redact,
)
from schemas.events import envelope
from schemas.store.notifications import AttemptResult, DispatchJob, Endpoint
from tests.reconciler.conftest import STREAM
from tests.support.brokers import (
    JetStreamServer,
    RabbitMQNode,
    connect_once,
    drain_queue,
    rabbitmq_answers,
    scratch_exchange,
)
from tests.support.servers import free_port
from tests.support.waiting import eventually

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SUBJECT = "taskledger.events.tasks"
SINK_TIMEOUT_SECONDS = 2.0
RESTART_MESSAGES = 50
RETRY_WITHIN_SECONDS = 30.0
# The brokers listen on loopback, which the address policy refuses unless allowed.
LOOPBACK = AddressPolicy(allowed_networks=(ip_network("127.0.0.1/32"),))


class Sink(Protocol):
    async def deliver(
        self, job: DispatchJob, body: bytes, headers: dict[str, str]
    ) -> AttemptResult: ...


def jobs(url: str, count: int, event_type: str = "task.succeeded") -> list[DispatchJob]:
    """`count` dispatches of distinct messages (fresh ids per call) to the endpoint `url`."""
    run = secrets.token_hex(4)
    endpoint = Endpoint(
        id="ep_test",
        kind=kind_of(url),
        url=url,
        description="",
        providers=None,
        owners=None,
        event_types=None,
        include_unconfirmed=False,
        secrets=[],
        enabled=True,
        disabled_reason=None,
        disabled_at=None,
        failing_since=None,
        last_success_at=None,
        created_at=AT,
        updated_at=AT,
    )
    return [
        DispatchJob(
            id=n,
            attempts=0,
            msg_id=f"msg_{run}_{n}",
            event_type=event_type,
            payload=envelope(event_type, {"ref": f"tl_{run}_{n}"}, AT),
            created_at=AT,
            endpoint=endpoint,
        )
        for n in range(count)
    ]


def body_of(job: DispatchJob) -> bytes:
    return json.dumps(job.payload).encode()


def headers_of(job: DispatchJob) -> dict[str, str]:
    return {
        "webhook-id": job.msg_id,
        "webhook-timestamp": str(int(AT.timestamp())),
        "webhook-signature": "v1,c2lnbmF0dXJlIG9mIHRoZSB0ZXN0",
    }


async def deliver(sink: Sink, job: DispatchJob) -> AttemptResult:
    return await sink.deliver(job, body_of(job), headers_of(job))


async def deliver_through_restart(
    sink: Sink,
    sent: Sequence[DispatchJob],
    stop: Callable[[], Awaitable[None]],
    start: Callable[[], Awaitable[None]],
) -> tuple[dict[str, AttemptResult], list[DispatchJob]]:
    """Deliver `sent` one after another in five runs: before the broker stops, while it
    stops, while it is down, while it starts, after. Each job's result, and the jobs
    delivered while the broker was down."""
    results: dict[str, AttemptResult] = {}
    size = len(sent) // 5
    runs = [sent[i * size : (i + 1) * size] for i in range(4)] + [sent[4 * size :]]

    async def run(part: Sequence[DispatchJob]) -> None:
        for job in part:
            results[job.msg_id] = await deliver(sink, job)

    await run(runs[0])
    await asyncio.gather(stop(), run(runs[1]))
    await run(runs[2])
    await asyncio.gather(start(), run(runs[3]))
    await run(runs[4])
    return results, list(runs[2])


async def retry_until_delivered(sink: Sink, job: DispatchJob) -> None:
    async def delivered() -> bool:
        return (await deliver(sink, job)).delivered

    await eventually(delivered, within=RETRY_WITHIN_SECONDS, every=0.1)


# -- NATS JetStream ------------------------------------------------------------------------


@pytest.fixture
async def nats_sink() -> AsyncIterator[NatsSink]:
    sink = NatsSink(policy=LOOPBACK, timeout_seconds=SINK_TIMEOUT_SECONDS)
    yield sink
    await sink.aclose()


def nats_url(server: JetStreamServer, subject: str = SUBJECT) -> str:
    return f"{server.url}/{subject}"


async def stream_messages(server: JetStreamServer) -> list[RawStreamMsg]:
    client = await connect_once(server.url)
    try:
        js = client.jetstream()
        state = (await js.stream_info(STREAM)).state
        return [await js.get_msg(STREAM, seq) for seq in range(state.first_seq, state.last_seq + 1)]
    finally:
        await client.close()


async def test_nats_sink_publishes_body_and_webhook_headers_with_msg_id(
    jetstream: JetStreamServer, nats_sink: NatsSink
) -> None:
    [job] = jobs(nats_url(jetstream), 1)

    result = await deliver(nats_sink, job)

    client = await connect_once(jetstream.url)
    try:
        subscription = await client.jetstream().subscribe(
            "taskledger.events.>", ordered_consumer=True
        )
        message = await subscription.next_msg(timeout=5)
    finally:
        await client.close()
    assert result.delivered, result.error
    assert (result.status_code, result.retry_at) == (None, None)
    assert message.subject == SUBJECT
    assert json.loads(message.data) == job.payload
    assert message.headers is not None
    assert {name: message.headers[name] for name in headers_of(job)} == headers_of(job)
    assert message.headers["Nats-Msg-Id"] == job.msg_id


async def test_nats_sink_resend_of_a_webhook_id_is_deduplicated_by_jetstream(
    jetstream: JetStreamServer, nats_sink: NatsSink
) -> None:
    [job] = jobs(nats_url(jetstream), 1)

    first, again = await deliver(nats_sink, job), await deliver(nats_sink, job)

    assert first.delivered
    assert again.delivered
    assert "duplicate" in (again.answer or "")
    assert [m.headers["Nats-Msg-Id"] for m in await stream_messages(jetstream) if m.headers] == [
        job.msg_id
    ]


async def test_nats_sink_fails_clearly_when_no_stream_holds_the_subject(
    jetstream: JetStreamServer, nats_sink: NatsSink
) -> None:
    [job] = jobs(nats_url(jetstream, "elsewhere.events"), 1)

    result = await deliver(nats_sink, job)

    assert not result.delivered
    assert result.error is not None
    assert "no JetStream stream holds subject elsewhere.events" in result.error


async def test_nats_sink_fails_without_credentials_when_the_server_is_down(
    nats_sink: NatsSink,
) -> None:
    [job] = jobs(f"nats://relay:s3cret@127.0.0.1:{free_port()}/{SUBJECT}", 1)

    result = await deliver(nats_sink, job)

    assert not result.delivered
    assert "cannot connect to NATS" in (result.error or "")
    assert "s3cret" not in (result.error or "")


async def test_nats_sink_fails_a_publish_in_flight_as_soon_as_the_server_goes_away(
    jetstream: JetStreamServer,
) -> None:
    sink = NatsSink(policy=LOOPBACK, timeout_seconds=600)  # only the drop can end this publish
    listener, heard = await connect_once(jetstream.url), asyncio.Event()

    async def hear(message: Msg) -> None:
        heard.set()

    await listener.subscribe("silent.events", cb=hear)  # a responder that never answers
    [job] = jobs(nats_url(jetstream, "silent.events"), 1)
    try:
        publishing = asyncio.create_task(deliver(sink, job))
        await asyncio.wait_for(heard.wait(), timeout=5)
        await jetstream.stop()
        result = await asyncio.wait_for(publishing, timeout=5)
    finally:
        await listener.close()
        await sink.aclose()

    assert not result.delivered
    assert "dropped before a PubAck" in (result.error or "")


async def test_nats_sink_delivers_concurrent_messages(
    jetstream: JetStreamServer, nats_sink: NatsSink
) -> None:
    sent = jobs(nats_url(jetstream), 20)

    results = await asyncio.gather(*(deliver(nats_sink, job) for job in sent))

    assert all(result.delivered for result in results)
    assert len(await stream_messages(jetstream)) == len(sent)


async def test_nats_sink_loses_nothing_and_duplicates_nothing_across_a_server_restart(
    jetstream: JetStreamServer, nats_sink: NatsSink
) -> None:
    sent = jobs(nats_url(jetstream), RESTART_MESSAGES)

    results, while_down = await deliver_through_restart(
        nats_sink, sent, jetstream.stop, jetstream.start
    )
    for job in sent:
        if not results[job.msg_id].delivered:
            await retry_until_delivered(nats_sink, job)

    assert not any(results[job.msg_id].delivered for job in while_down)
    stored = [m.headers["Nats-Msg-Id"] for m in await stream_messages(jetstream) if m.headers]
    assert sorted(stored) == sorted(job.msg_id for job in sent)


# -- RabbitMQ ------------------------------------------------------------------------------


def new_amqp_sink() -> AmqpSink:
    return AmqpSink(
        policy=LOOPBACK, timeout_seconds=SINK_TIMEOUT_SECONDS, reconnect_interval_seconds=0.2
    )


@pytest.fixture
async def amqp_sink(rabbitmq: None) -> AsyncIterator[AmqpSink]:
    sink = new_amqp_sink()
    yield sink
    await sink.aclose()


@pytest.fixture
async def own_amqp_sink(own_rabbitmq: RabbitMQNode) -> AsyncIterator[AmqpSink]:
    """An AMQP sink closed before the test's own node stops."""
    sink = new_amqp_sink()
    yield sink
    await sink.aclose()


async def test_amqp_sink_publishes_a_persistent_message_keyed_by_event_type(
    amqp_sink: AmqpSink,
) -> None:
    async with scratch_exchange("task.#") as scratch:
        [job] = jobs(scratch.url(), 1)
        result = await deliver(amqp_sink, job)
        assert scratch.queue is not None
        [message] = await drain_queue(scratch.queue)

    assert result.delivered, result.error
    assert (result.status_code, result.retry_at) == (None, None)
    assert json.loads(message.body) == job.payload
    assert message.message_id == job.msg_id
    assert message.routing_key == job.event_type
    assert message.delivery_mode == 2
    assert {name: message.headers[name] for name in headers_of(job)} == headers_of(job)


async def test_amqp_sink_publishes_with_the_urls_routing_key(amqp_sink: AmqpSink) -> None:
    async with scratch_exchange("products.video") as scratch:
        [job] = jobs(scratch.url(routing_key="products.video"), 1)
        result = await deliver(amqp_sink, job)
        assert scratch.queue is not None
        delivered = await drain_queue(scratch.queue)

    assert result.delivered, result.error
    assert [message.routing_key for message in delivered] == ["products.video"]


async def test_amqp_sink_fails_an_unroutable_message(amqp_sink: AmqpSink) -> None:
    async with scratch_exchange(binding=None) as scratch:
        [job] = jobs(scratch.url(), 1)
        result = await deliver(amqp_sink, job)

    assert not result.delivered
    assert result.error is not None
    assert f"no queue is bound to exchange {scratch.exchange}" in result.error


async def test_amqp_sink_fails_a_missing_exchange_without_spoiling_others(
    amqp_sink: AmqpSink,
) -> None:
    async with scratch_exchange("#") as scratch:
        [missing] = jobs(scratch.url().replace(scratch.exchange, "taskledger-test-absent"), 1)
        [good] = jobs(scratch.url(), 1)
        failed, delivered = await asyncio.gather(
            deliver(amqp_sink, missing), deliver(amqp_sink, good)
        )

    assert not failed.delivered
    assert "no exchange taskledger-test-absent" in (failed.error or "")
    assert delivered.delivered, delivered.error


async def test_amqp_sink_fails_without_credentials_when_the_broker_is_down(
    amqp_sink: AmqpSink,
) -> None:
    [job] = jobs(f"amqp://relay:s3cret@127.0.0.1:{free_port()}/?exchange=events", 1)

    result = await deliver(amqp_sink, job)

    assert not result.delivered
    assert "cannot connect to RabbitMQ" in (result.error or "")
    assert "s3cret" not in (result.error or "")


async def test_amqp_sink_delivers_concurrent_messages(amqp_sink: AmqpSink) -> None:
    async with scratch_exchange("#") as scratch:
        sent = jobs(scratch.url(), 20)
        results = await asyncio.gather(*(deliver(amqp_sink, job) for job in sent))
        assert scratch.queue is not None
        delivered = await drain_queue(scratch.queue)

    assert all(result.delivered for result in results)
    assert sorted(m.message_id or "" for m in delivered) == sorted(job.msg_id for job in sent)


async def test_amqp_sink_loses_nothing_across_a_broker_restart(
    own_rabbitmq: RabbitMQNode, own_amqp_sink: AmqpSink
) -> None:
    async with scratch_exchange("#", own_rabbitmq.url) as scratch:
        sent = jobs(scratch.url(), RESTART_MESSAGES)
        try:
            results, while_down = await deliver_through_restart(
                own_amqp_sink, sent, own_rabbitmq.stop_app, own_rabbitmq.start_app
            )
        finally:
            if not await rabbitmq_answers(own_rabbitmq.url):
                await own_rabbitmq.start_app()  # so the exchange can be deleted
        for job in sent:
            if not results[job.msg_id].delivered:
                await retry_until_delivered(own_amqp_sink, job)
        assert scratch.queue is not None
        delivered = await drain_queue(scratch.queue, own_rabbitmq.url)

    assert not any(results[job.msg_id].delivered for job in while_down)
    assert {m.message_id for m in delivered} == {job.msg_id for job in sent}


# -- endpoint URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        pytest.param(
            "nats://127.0.0.1:4222/taskledger.events",
            NatsTarget("127.0.0.1", 4222, "taskledger.events"),
            id="nats",
        ),
        pytest.param(
            "nats://relay:p%40ss@nats.internal/a.b",
            NatsTarget("nats.internal", 4222, "a.b", "relay", "p@ss"),
            id="nats-credentials-default-port",
        ),
        pytest.param(
            "nats://t0ken@[::1]:4333/a",
            NatsTarget("::1", 4333, "a", "t0ken"),
            id="nats-token-ipv6",
        ),
        pytest.param(
            "amqp://guest:guest@127.0.0.1:5672/?exchange=events",
            AmqpTarget("127.0.0.1", 5672, "/", "events", None, "guest", "guest"),
            id="amqp-default-vhost",
        ),
        pytest.param(
            "amqps://u:p@rabbit.example/prod?exchange=events&routing_key=task.all",
            AmqpTarget("rabbit.example", 5671, "prod", "events", "task.all", "u", "p", tls=True),
            id="amqps-vhost-routing-key",
        ),
        pytest.param(
            "amqp://rabbit/%2F?exchange=x",
            AmqpTarget("rabbit", 5672, "/", "x"),
            id="amqp-encoded-root-vhost",
        ),
        pytest.param(
            "AMQP://rabbit/a%2Fb?exchange=x",
            AmqpTarget("rabbit", 5672, "a/b", "x"),
            id="amqp-uppercase-scheme-slash-in-vhost",
        ),
    ],
)
def test_parse_broker_url_reads_a_target(url: str, target: Any) -> None:
    assert parse_broker_url(url) == target


@pytest.mark.parametrize(
    ("url", "says"),
    [
        pytest.param("nats://host:4222", "needs a subject", id="nats-no-subject"),
        pytest.param("nats://host:4222/", "needs a subject", id="nats-empty-subject"),
        pytest.param("nats://host/a.*.c", "wildcards", id="nats-star"),
        pytest.param("nats://host/a.>", "wildcards", id="nats-tail"),
        pytest.param("nats://host/a..b", "empty token", id="nats-double-dot"),
        pytest.param("nats://host/.a", "empty token", id="nats-leading-dot"),
        pytest.param("nats://host/a%20b", "whitespace", id="nats-space"),
        pytest.param("nats://host:99999/a", "invalid port", id="nats-port-range"),
        pytest.param("nats://host:port/a", "invalid port", id="nats-port-name"),
        pytest.param("nats://host:0/a", "port must be from 1 to 65535", id="nats-port-zero"),
        pytest.param("nats:///a", "needs a host", id="nats-no-host"),
        pytest.param("nats://host/a?x=1", "no query", id="nats-query"),
        pytest.param("amqp://host/?routing_key=k", "needs ?exchange", id="amqp-no-exchange"),
        pytest.param("amqp://host/?exchange=", "needs ?exchange", id="amqp-empty-exchange"),
        pytest.param("amqp://host/?exchange=x&exchange=y", "more than once", id="amqp-twice"),
        pytest.param("amqp://host/?exchange=x&queue=q", "not queue", id="amqp-unknown"),
        pytest.param("amqp://host/a/b?exchange=x", "%2F", id="amqp-raw-slash-vhost"),
        pytest.param("amqp://host/?exchange=" + "x" * 256, "255 bytes", id="amqp-long-name"),
        pytest.param("amqp://host/?exchange=x#f", "no fragment", id="amqp-fragment"),
        pytest.param("ftp://host/x", "scheme 'ftp'", id="other-scheme"),
        pytest.param("events.tasks", "no scheme", id="no-scheme"),
        pytest.param("https://example.com/hook", "webhook, not a broker", id="https"),
        pytest.param("nats://host/a b", "spaces", id="raw-space"),
    ],
)
def test_parse_broker_url_refuses_with_a_reason(url: str, says: str) -> None:
    with pytest.raises(EndpointUrlError, match=None) as refused:
        parse_broker_url(url)

    assert says in str(refused.value)
    assert isinstance(refused.value, ValueError)


def test_parse_broker_url_never_names_the_password_it_refuses() -> None:
    with pytest.raises(EndpointUrlError) as refused:
        parse_broker_url("amqp://relay:s3cret@host/?queue=x")

    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        pytest.param("https://example.com/hook", "http", id="https"),
        pytest.param("http://127.0.0.1:8080/hook", "http", id="http"),
        pytest.param("nats://host/a", "nats", id="nats"),
        pytest.param("NATS://host/a", "nats", id="nats-uppercase"),
        pytest.param("amqp://host/?exchange=x", "amqp", id="amqp"),
        pytest.param("amqps://host/?exchange=x", "amqp", id="amqps"),
    ],
)
def test_kind_of_reads_the_scheme(url: str, kind: str) -> None:
    assert kind_of(url) == kind


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("nats://u:p@host:4222/a.b", "nats://host:4222/a.b", id="nats"),
        pytest.param(
            "amqps://u:p%40ss@h/v?exchange=x", "amqps://h/v?exchange=x", id="amqps-encoded"
        ),
        pytest.param("https://tok@example.com/h", "https://example.com/h", id="token"),
        pytest.param("https://example.com/h?a=1", "https://example.com/h?a=1", id="untouched"),
    ],
)
def test_redact_removes_credentials(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_routing_key_defaults_to_the_event_type() -> None:
    target = parse_broker_url("amqp://host/?exchange=x")

    assert isinstance(target, AmqpTarget)
    assert target.routing_key_for("task.failed") == "task.failed"
