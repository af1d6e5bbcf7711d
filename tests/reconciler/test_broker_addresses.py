"""The broker sinks check where they connect at send time: each connect resolves the host
again (DNS may have changed since the endpoint was registered), goes only to an address the
policy allows, and a refused host fails the delivery as a refused webhook does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from ipaddress import ip_network
from typing import Any

import pytest

from reconciler.brokers import AmqpSink, NatsSink
from schemas.addresses import AddressPolicy
from schemas.store.notifications import AttemptResult
from tests.reconciler.conftest import Names
from tests.reconciler.test_brokers import SUBJECT, Sink, deliver, jobs
from tests.support.brokers import (
    RABBITMQ_PORT,
    JetStreamServer,
    RabbitMQNode,
    scratch_exchange,
)
from tests.support.waiting import eventually

LOOPBACK = AddressPolicy(allowed_networks=(ip_network("127.0.0.1/32"),))
PUBLIC_ONLY = AddressPolicy()
SINK_TIMEOUT_SECONDS = 2.0
BUS = "bus.taskledger.test"  # a name only the tests' name table knows
# The refused addresses below are private ones, never a cloud metadata address: were the
# check to fail, a test would connect to it (the address policy's tests cover metadata).
RECONNECTED_WITHIN_SECONDS = 30.0


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, list[object]]]:
    """A loopback port that stands for a broker and notes every connection it gets."""
    accepted: list[object] = []

    async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(note, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], accepted


def nats_sink(policy: AddressPolicy) -> NatsSink:
    return NatsSink(policy=policy, timeout_seconds=SINK_TIMEOUT_SECONDS)


def amqp_sink(policy: AddressPolicy) -> AmqpSink:
    return AmqpSink(
        policy=policy, timeout_seconds=SINK_TIMEOUT_SECONDS, reconnect_interval_seconds=0.1
    )


async def send_once(sink: NatsSink | AmqpSink, url: str) -> AttemptResult:
    [job] = jobs(url, 1)
    try:
        return await deliver(sink, job)
    finally:
        await sink.aclose()


def assert_refused(result: AttemptResult, says: str) -> None:
    """Failed as the HTTP sink fails a refused URL: no status, `refused: ` and why."""
    assert not result.delivered
    assert (result.status_code, result.retry_at, result.gone) == (None, None, False)
    assert result.error is not None
    assert result.error.startswith("refused: ")
    assert says in result.error


# -- a literal address, or a name resolving to a refused one, at send time -----------------


@pytest.mark.parametrize(
    ("make", "url"),
    [
        (nats_sink, "nats://127.0.0.1:{port}/x"),
        (amqp_sink, "amqp://u:p@127.0.0.1:{port}/%2f?exchange=x&routing_key=y"),
    ],
    ids=["nats", "amqp"],
)
async def test_a_sink_never_connects_to_a_refused_literal_address(
    listener: tuple[int, list[object]], make: Callable[[AddressPolicy], Any], url: str
) -> None:
    port, accepted = listener

    result = await send_once(make(PUBLIC_ONLY), url.format(port=port))

    assert_refused(result, "127.0.0.1 is not a public address")
    assert accepted == []


@pytest.mark.parametrize(
    ("make", "url", "address", "says"),
    [
        (nats_sink, f"nats://{BUS}:{{port}}/x", "10.0.0.5", "10.0.0.5 is not a public"),
        (amqp_sink, f"amqp://{BUS}:{{port}}/?exchange=x", "10.0.0.5", "10.0.0.5 is not a"),
        (amqp_sink, f"amqps://{BUS}:{{port}}/?exchange=x", "127.0.0.2", "127.0.0.2 is not a"),
    ],
    ids=["nats-private", "amqp-private", "amqps-loopback-not-allowed"],
)
async def test_a_sink_refuses_a_name_that_resolves_to_a_refused_address_at_send_time(
    names: Names,
    listener: tuple[int, list[object]],
    make: Callable[[AddressPolicy], Any],
    url: str,
    address: str,
    says: str,
) -> None:
    port, accepted = listener
    names.answer(BUS, [address])

    result = await send_once(make(LOOPBACK), url.format(port=port))

    assert_refused(result, says)
    assert BUS in names.asked
    assert accepted == []


# -- the connection goes to the checked address, and a changed name is checked again --------


async def test_nats_connects_to_the_address_it_checked_and_checks_again_on_reconnect(
    names: Names, jetstream: JetStreamServer
) -> None:
    sink = nats_sink(LOOPBACK)
    url = f"nats://{BUS}:{jetstream.port}/{SUBJECT}"
    names.answer(BUS, ["127.0.0.1"])
    try:
        [first, second] = jobs(url, 2)
        delivered = await deliver(sink, first)
        names.answer(BUS, ["10.0.0.5"])  # the name moves inside; the open connection stays checked
        await jetstream.stop()
        await jetstream.start()
        result = await _refused_in_time(sink, second)
    finally:
        await sink.aclose()

    assert delivered.delivered, delivered.error
    assert_refused(result, "10.0.0.5 is not a public address")


async def test_nats_connects_to_no_address_but_the_checked_one(
    names: Names, jetstream: JetStreamServer
) -> None:
    """The name resolves to a loopback broker once: the client never looks it up again."""
    names.answer(BUS, ["127.0.0.1"])
    sink = nats_sink(LOOPBACK)
    try:
        [job] = jobs(f"nats://{BUS}:{jetstream.port}/{SUBJECT}", 1)
        result = await deliver(sink, job)
    finally:
        await sink.aclose()

    assert result.delivered, result.error
    assert names.asked == [BUS]


@pytest.mark.usefixtures("rabbitmq")
async def test_amqp_connects_to_no_address_but_the_checked_one(names: Names) -> None:
    names.answer(BUS, ["127.0.0.1"])
    sink = amqp_sink(LOOPBACK)
    async with scratch_exchange("#") as scratch:
        url = scratch.url().replace(f"127.0.0.1:{RABBITMQ_PORT}", f"{BUS}:{RABBITMQ_PORT}")
        [job] = jobs(url, 1)
        try:
            result = await deliver(sink, job)
        finally:
            await sink.aclose()

    assert result.delivered, result.error
    assert names.asked == [BUS]


async def test_amqp_checks_the_name_again_when_it_reconnects_in_the_background(
    names: Names, own_rabbitmq: RabbitMQNode
) -> None:
    names.answer(BUS, ["127.0.0.1"])
    sink = amqp_sink(LOOPBACK)
    async with scratch_exchange("#", own_rabbitmq.url) as scratch:
        port = own_rabbitmq.port
        url = scratch.url().replace(f"127.0.0.1:{port}", f"{BUS}:{port}")
        [first, second] = jobs(url, 2)
        try:
            delivered = await deliver(sink, first)
            names.answer(BUS, ["10.0.0.5"])
            try:
                await own_rabbitmq.stop_app()
            finally:
                await own_rabbitmq.start_app()
            result = await _refused_in_time(sink, second)
        finally:
            await sink.aclose()

    assert delivered.delivered, delivered.error
    assert_refused(result, "10.0.0.5 is not a public address")


async def _refused_in_time(sink: Sink, job: Any) -> AttemptResult:
    """The first result of sending `job` again and again that is a refusal (the client may
    first notice the dropped connection, or the broker may still be starting)."""
    results: list[AttemptResult] = []

    async def refused() -> bool:
        results.append(await deliver(sink, job))
        return (results[-1].error or "").startswith("refused: ")

    await eventually(refused, within=RECONNECTED_WITHIN_SECONDS, every=0.1)
    return results[-1]
