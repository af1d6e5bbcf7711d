"""The CSV export opened in a spreadsheet runs nothing: a text cell that would start a
formula (an owner, a model, a provider's error) starts with `'` (OWASP's CSV injection
advice); numbers stay numbers, and the JSON lines keep every value as it is."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.ledger import Poll
from schemas.states import State
from schemas.store import LedgerStore
from schemas.tables import TASK
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.support.service import Service, running_service, settings_for

FORMULAS = {
    "equals": '=HYPERLINK("http://evil","x")',
    "plus": "+cmd|' /C calc'!A0",
    "minus": "-2+3+cmd|' /C calc'!A0",
    "at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "carriage-return": "\r=1+1",
}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


async def failed_with(service: Service, store: LedgerStore, clock: FakeClock, text: str) -> str:
    """A task whose owner, model and provider's error message are `text` (the owner trimmed
    of the spaces around it, as every owner is)."""
    task = await service.register("apidot", provider_task_id="t-1", owner=text, model=text)
    failed = Observation("t-1", State.FAILED, error_code=text, error_message=text)
    await store.ingest([Poll(task["ref"], clock(), None, failed, 200, "{}")])
    return str(task["ref"])


async def exported(service: Service, kind: str) -> str:
    answer = await service.http.get("/v1/export", params={"format": kind}, headers=service.admin)
    assert answer.status_code == 200, answer.text
    return answer.text


@pytest.mark.parametrize("text", FORMULAS.values(), ids=FORMULAS)
async def test_a_text_cell_that_would_run_as_a_formula_starts_with_a_quote(
    service: Service, store: LedgerStore, clock: FakeClock, text: str
) -> None:
    await failed_with(service, store, clock, text)
    (row,) = csv.DictReader(io.StringIO(await exported(service, "csv"), newline=""))
    cells = {name: row[name] for name in ("owner", "model", "error_code", "error_message")}
    assert cells == {
        "owner": "'" + text.strip(),
        "model": "'" + text,
        "error_code": "'" + text,
        "error_message": "'" + text,
    }
    (line,) = (await exported(service, "jsonl")).splitlines()
    assert orjson.loads(line)["error_message"] == text


async def test_numbers_stay_numbers_and_plain_text_stays_as_it_is(
    service: Service, store: LedgerStore, clock: FakeClock, engine: AsyncEngine
) -> None:
    """A provider's error code may be a number, a negative one too: only text is quoted."""
    ref = await failed_with(service, store, clock, "team a")
    async with engine.begin() as conn:
        error = {"code": -3, "message": "1+1 is not a formula"}
        await conn.execute(sa.update(TASK).where(TASK.c.ref == ref).values(result={"error": error}))
    (row,) = csv.DictReader(io.StringIO(await exported(service, "csv"), newline=""))
    assert (row["owner"], row["model"], row["progress"]) == ("team a", "team a", "0")
    assert (row["error_code"], row["error_message"]) == ("-3", "1+1 is not a formula")
