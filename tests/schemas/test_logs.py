"""Log lines reach stdout: one flush per event-loop turn on a loop, at once elsewhere."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson
import pytest
import structlog

from schemas import logs


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed = ""

    def flush(self) -> None:
        self.flushes += 1
        self.flushed = self.getvalue()


def capture(monkeypatch: pytest.MonkeyPatch) -> CountingStream:
    """Stdout swapped in the test's own phase (pytest's capture swaps it between phases)."""
    logs.configure("info", json=True)
    stream = CountingStream()
    monkeypatch.setattr("sys.stdout", stream)
    return stream


async def test_lines_of_one_loop_turn_go_out_in_one_flush_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = capture(monkeypatch)
    log = structlog.get_logger("test")
    for i in range(5):
        log.info("delivery_stored", n=i)
    assert stream.flushes == 0
    await asyncio.sleep(0)
    assert stream.flushes == 1
    assert stream.flushed.count("delivery_stored") == 5
    log.info("delivery_stored", n=5)
    await asyncio.sleep(0)
    assert stream.flushes == 2


async def test_a_flush_left_due_on_an_ended_loop_does_not_hold_back_later_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = capture(monkeypatch)

    def on_a_loop_that_ends_at_once() -> None:
        loop = asyncio.new_event_loop()

        async def log_and_return() -> None:
            structlog.get_logger("test").info("first")

        loop.run_until_complete(log_and_return())  # the due flush never runs
        loop.close()

    await asyncio.to_thread(on_a_loop_that_ends_at_once)
    structlog.get_logger("test").info("second")
    await asyncio.sleep(0)
    assert "second" in stream.flushed


def test_a_line_logged_off_any_loop_is_flushed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = capture(monkeypatch)
    structlog.get_logger("test").info("receiver_stopped")
    assert stream.flushes == 1
    assert "receiver_stopped" in stream.flushed


def test_a_throttle_lets_one_line_a_key_through_each_period_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = logs.Throttle(10.0, clock=lambda: now[0])
    assert throttle.due("full") == 0
    assert [throttle.due("full") for _ in range(5)] == [None] * 5
    assert throttle.due("busy") == 0  # each key has its own period
    now[0] += 10.0
    assert throttle.due("full") == 5  # the lines left out, told with the next one
    assert throttle.due("full") is None


def test_uvicorn_and_library_lines_are_json_lines_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn configures its loggers before it loads the app; once the app configures
    logging, uvicorn's own lines come out as the app's do (not its access log)."""
    server = logging.getLogger("uvicorn.error")
    server.addHandler(logging.StreamHandler(io.StringIO()))  # as uvicorn's set-up leaves it
    server.propagate = False
    server.setLevel(logging.INFO)
    stream = capture(monkeypatch)
    server.info("Started server process [%d]", 42)
    logging.getLogger("some.library").warning("careful: token=%s", "x")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line["level"], line["logger"]) for line in lines] == [
        ("Started server process [42]", "info", "uvicorn.error"),
        ("careful: token=x", "warning", "some.library"),
    ]
    assert all("timestamp" in line for line in lines)


def test_uvicorn_access_log_is_left_as_uvicorn_set_it() -> None:
    """`--no-access-log` leaves it without handlers and not propagating: it would print
    every callback's path, token included."""
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    logs.configure("info", json=True)
    assert (access.handlers, access.propagate) == ([], False)
