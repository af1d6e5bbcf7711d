"""A refused callback is counted every time, and logged at most once every 10 s for its
provider and reason: forged callbacks, or every callback of a database outage, must not
become as many log lines."""

from __future__ import annotations

import pytest

from tests.conftest import FakeClock
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
