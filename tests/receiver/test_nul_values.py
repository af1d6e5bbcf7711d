"""NUL in what a provider sends (`\\u0000` in a JSON string). PostgreSQL stores no NUL in
text: one such value had refused the write of its whole batch, which the receiver took for
an outage (spooled, never drained), and stalled every pass of a provider's polls.

A NUL is read as U+FFFD, on both databases; the body is kept as it came. A value the
database refuses all the same fails its own delivery alone, which is then kept unread."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import httpx
import orjson

from receiver.writer import GroupCommitWriter
from reconciler.clients import ProviderClients
from reconciler.process import Reconciler
from schemas.errors import ValueRefused
from schemas.json_text import NUL_READ_AS, storable_json
from schemas.ledger import Delivery, Stored
from schemas.settings import ProviderSettings, Settings
from schemas.states import Outcome
from schemas.store import LedgerStore, NewTask
from schemas.wire import WireFormat
from tests.conftest import FakeClock
from tests.receiver.test_writer import delivery
from tests.support.service import Service

NUL_FAILURE = (
    b'{"code":200,"data":{"task_id":"%s","status":"failed","progress":10,'
    b'"error_message":"bad\\u0000thing","files":[{"file_url":"https://cdn.example/a\\u0000b"}]}}'
)


def apidot_running(task_id: str) -> bytes:
    return orjson.dumps({"code": 200, "data": {"task_id": task_id, "status": "running"}})


def test_a_nul_is_read_as_the_replacement_character_keys_and_nesting_included() -> None:
    text = b'{"a\\u0000":["x\\u0000y",{"k":"\\u0000"}],"b":"\\\\u0000"}'
    assert storable_json(text) == {
        "a" + NUL_READ_AS: ["x" + NUL_READ_AS + "y", {"k": NUL_READ_AS}],
        "b": "\\u0000",  # a backslash, then `u0000`: no NUL
    }
    deep = b"[" * 1000 + b'"\\u0000"' + b"]" * 1000
    value = storable_json(deep)
    for _ in range(1000):
        (value,) = value
    assert value == NUL_READ_AS


async def test_a_callback_holding_nul_is_stored_with_its_whole_batch(strict: Service) -> None:
    tasks = [
        await strict.task_with_callback("apidot", provider_task_id=f"t-{i}") for i in range(21)
    ]
    bodies = [NUL_FAILURE % b"t-0"] + [apidot_running(f"t-{i}") for i in range(1, 21)]
    answers = await asyncio.gather(
        *(
            strict.http.post(path, content=body)
            for (_, path), body in zip(tasks, bodies, strict=True)
        )
    )
    assert [answer.status_code for answer in answers] == [200] * 21, answers[0].text
    assert {answer.json()["outcome"] for answer in answers} == {"applied"}
    failed = await strict.task(tasks[0][0])
    assert failed["state"] == "failed"
    assert failed["result"]["error"]["message"] == f"bad{NUL_READ_AS}thing"
    [kept] = failed["timeline"]["deliveries"]
    payload = await strict.http.get(
        f"/v1/tasks/{tasks[0][0]}/deliveries/{kept['id']}", headers=strict.admin
    )
    assert payload.json()["body"] == (NUL_FAILURE % b"t-0").decode()  # as it came
    for ref, _ in tasks[1:]:
        assert (await strict.task(ref))["state"] == "running"


async def test_an_api_body_holding_nul_is_refused_naming_it(strict: Service) -> None:
    body = b'{"provider":"apidot","model":"sora\\u00002"}'
    answer = await strict.http.post(
        "/v1/tasks",
        content=body,
        headers=strict.admin | {"content-type": "application/json"},
    )
    assert answer.status_code == 422
    assert "NUL" in answer.json()["message"]


async def four_due_apidot_tasks(store: LedgerStore, clock: FakeClock) -> tuple[Settings, list[str]]:
    """An apidot account with a base URL, and four of its tasks due for a poll."""
    provider = ProviderSettings(
        "apidot", WireFormat.APIDOT, base_url="https://api.example", expected_seconds=1
    )
    settings = Settings(callback_secrets=("s",), admin_token="t", providers={"apidot": provider})
    refs = [
        (await store.register(NewTask("apidot", provider_task_id=f"t-{i}", expected_seconds=1))).ref
        for i in range(4)
    ]
    clock.advance(2)
    return settings, refs


def apidot_finished(task_id: str) -> bytes:
    return orjson.dumps({"code": 200, "data": {"task_id": task_id, "status": "finished"}})


async def test_a_poll_answer_holding_nul_settles_with_its_neighbours(
    store: LedgerStore, clock: FakeClock
) -> None:
    settings, refs = await four_due_apidot_tasks(store, clock)

    def answers(request: httpx.Request) -> httpx.Response:
        task_id = request.url.params.get("task_id") or request.url.path.rsplit("/", 1)[-1]
        if task_id == "t-0":
            return httpx.Response(200, content=NUL_FAILURE % b"t-0")
        if task_id == "t-1":  # not JSON: kept as text, for the poll's error
            return httpx.Response(200, content=b"<html>\x00 upstream error</html>")
        return httpx.Response(200, content=apidot_finished(task_id))

    transport = httpx.MockTransport(answers)
    async with ProviderClients.open(settings.providers.values(), transport=transport) as clients:
        await Reconciler(settings, store, clients, clock=clock).run_pass()
    tasks = [await store.get(ref) for ref in refs]
    assert [task.state if task else None for task in tasks] == [
        "failed",
        "submitted",
        "succeeded",
        "succeeded",
    ]
    [poll] = (await store.timeline(refs[1])).polls
    assert poll.body == f"<html>{NUL_READ_AS} upstream error</html>"
    assert tasks[0] is not None
    assert tasks[0].result["error"]["message"] == f"bad{NUL_READ_AS}thing"


async def test_a_value_the_database_refuses_fails_alone_and_its_delivery_is_kept_unread() -> None:
    """What a database refuses of one delivery's reading: its neighbours are stored, and
    so is it, without the reading (as an unread body is)."""
    written: list[Delivery] = []

    async def ingest(items: Sequence[Delivery]) -> list[Stored]:
        if any(item.delivery_key == "poison" and item.observation for item in items):
            raise ValueRefused("the database refused a value: DataError (SQLSTATE 22P05)")
        written.extend(items)
        return [Stored(Outcome.APPLIED, item.delivery_key) for item in items]

    writer = GroupCommitWriter(ingest)
    await writer.start()
    try:
        results = await asyncio.gather(
            *(writer.submit(delivery(key)) for key in ("a", "poison", "b"))
        )
    finally:
        await writer.stop()
    assert [result.outcome for result in results] == [Outcome.APPLIED] * 3
    kept = {item.delivery_key: item for item in written}
    assert set(kept) == {"a", "poison", "b"}
    poison = kept["poison"]
    assert poison.observation is None
    assert poison.unread is not None
    assert poison.unread.reason == "not_storable"
    assert poison.provider_task_id == "t"
    assert writer.refusal is None  # one delivery's value says nothing of the database


class _Refusing:
    """The real store, but a write holding the evidence of `poisoned` is refused as
    PostgreSQL refuses a value it cannot store."""

    def __init__(self, store: LedgerStore, poisoned: str) -> None:
        self._store = store
        self.poisoned = poisoned

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def ingest(self, evidence: Sequence[Any]) -> list[Stored]:
        if any(getattr(item, "task_ref", None) == self.poisoned for item in evidence):
            raise ValueRefused("the database refused a value: DataError (SQLSTATE 22P05)")
        return await self._store.ingest(evidence)


async def test_a_poll_the_database_refuses_fails_its_own_task_alone(
    store: LedgerStore, clock: FakeClock
) -> None:
    settings, refs = await four_due_apidot_tasks(store, clock)

    def answers(request: httpx.Request) -> httpx.Response:
        task_id = request.url.params.get("task_id") or request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, content=apidot_finished(task_id))

    refusing = cast(LedgerStore, _Refusing(store, refs[0]))
    transport = httpx.MockTransport(answers)
    async with ProviderClients.open(settings.providers.values(), transport=transport) as clients:
        report = await Reconciler(settings, refusing, clients, clock=clock).run_pass()
    states = [task.state if task else None for task in [await store.get(ref) for ref in refs]]
    assert states == ["submitted", "succeeded", "succeeded", "succeeded"]
    assert report.errors == 1
