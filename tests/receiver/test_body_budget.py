"""All the bodies a receiver reads at once are bounded together, not only each one: 2,000
connections each holding a body of 1 MiB (unauthenticated until it is read) had taken a
receiver to 2.4 GB. Past the bound a request is answered 503, to be sent again."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from receiver import bodies
from tests.support.senders import apidot_body
from tests.support.service import Service
from tests.support.waiting import until

BUDGET = 64 * 1024


async def test_bodies_past_the_budget_are_503_until_it_frees(
    strict: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bodies, "BODIES_MAX_BYTES", BUDGET)
    _, held_path = await strict.task_with_callback("apidot", provider_task_id="t-held")
    _, path = await strict.task_with_callback("apidot", provider_task_id="t-1")
    port = urlsplit(strict.base_url).port
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"POST {held_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
        writer.write(head.encode() + b" " * (BUDGET - 1024))  # most of the budget, held
        await writer.drain()
        await until(lambda: bodies._HELD.size >= BUDGET - 1024)
        refused = await strict.http.post(path, content=apidot_body("t-1", "running") + b" " * 2048)
        assert refused.status_code == 503, refused.text
        assert "retry-after" in refused.headers
    finally:
        writer.close()
    await until(lambda: bodies._HELD.size == 0)  # a body given up frees its share
    taken = await strict.http.post(path, content=apidot_body("t-1", "running"))
    assert taken.status_code == 200, taken.text
