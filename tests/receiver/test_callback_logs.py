"""A refused callback is counted every time, and logged at most once every 10 s for its
provider and reason: forged callbacks, or every callback of a database outage, must not
become as many log lines. A stored one is a line only at debug."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from schemas import logs
from tests.conftest import FakeClock
from tests.support.senders import apidot_body
from tests.support.service import running_service, settings_for

FORGED = 50


async def test_a_flood_of_forged_callbacks_is_one_line_and_every_one_counted(
    database_url: str, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_service(settings_for(database_url), clock) as service:
        capsys.readouterr()
        for i in range(FORGED):
            answer = await service.http.post(
                f"/callbacks/apidot/forged-token-{i}",
                content=b'{"code": 200}',
                headers={"content-type": "application/json"},
            )
            assert answer.status_code == 401
        metrics = (await service.http.get("/metrics")).text
    refused = [line for line in capsys.readouterr().out.splitlines() if "delivery_refused" in line]
    assert len(refused) == 1
    assert "apidot" in refused[0]
    assert "unauthenticated" in refused[0]
    counted = 'taskledger_rejections_total{provider="apidot",reason="unauthenticated"}'
    assert f"{counted} {FORGED}.0" in metrics


@pytest.mark.parametrize(("level", "lines"), [("debug", 1), ("info", 0)])
async def test_a_stored_delivery_is_a_line_only_at_debug(
    database_url: str,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    level: str,
    lines: int,
) -> None:
    logs.configure(level, json=True)  # as the web process does at start
    async with running_service(settings_for(database_url, log_level=level), clock) as service:
        task = await service.register("apidot", provider_task_id="task-debug")
        capsys.readouterr()
        answer = await service.http.post(
            urlsplit(task["callback_url"]).path,
            content=apidot_body("task-debug", "running"),
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 200
    out = capsys.readouterr().out
    assert sum("delivery_stored" in line for line in out.splitlines()) == lines
