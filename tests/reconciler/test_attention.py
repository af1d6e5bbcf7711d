"""Tasks the reconciler cannot settle are flagged with a reason, never polled in a storm,
never lost silently, and never submitted twice."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import httpx
import sqlalchemy as sa

from reconciler.clients import ProviderClients
from reconciler.process import UNCONFIRMED, UNCONFIRMED_POLL_LIMIT, Reconciler
from schemas.ledger import Auth, Delivery, Poll
from schemas.settings import ProviderSettings, Settings
from schemas.states import State
from schemas.store import LedgerStore, NewTask, TaskFilter
from schemas.tables import OBSERVATION
from schemas.wire import Observation, WireFormat
from tests.conftest import FakeClock

BASE = "https://provider.example"


def _settings(max_age_seconds: float = 600) -> Settings:
    provider = ProviderSettings(
        "evolink",
        WireFormat.EVOLINK,
        base_url=BASE,
        expected_seconds=1,
        max_age_seconds=max_age_seconds,
    )
    return Settings(callback_secrets=("s",), admin_token="t", providers={"evolink": provider})


async def _passes(
    store: LedgerStore,
    clock: FakeClock,
    answer: Callable[[httpx.Request], httpx.Response],
    *,
    passes: int,
    step_seconds: float,
    settings: Settings | None = None,
) -> list[httpx.Request]:
    sent: list[httpx.Request] = []

    def recorded(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answer(request)

    settings = settings or _settings()
    transport = httpx.MockTransport(recorded)
    async with ProviderClients.open(settings.providers.values(), transport=transport) as clients:
        reconciler = Reconciler(settings, store, clients, clock=clock)
        for _ in range(passes):
            await reconciler.run_pass()
            clock.advance(step_seconds)
    return sent


async def test_unreadable_poll_answers_flag_the_task_and_it_ends_lost_with_that_reason(
    store: LedgerStore, clock: FakeClock
) -> None:
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    clock.advance(2)

    def odd(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "t-1", "status": "teleporting"})

    sent = await _passes(store, clock, odd, passes=3, step_seconds=30)
    flagged = await store.get(row.ref)
    assert flagged is not None
    assert flagged.attention.startswith("provider answers unrecognized")
    assert flagged.state == State.SUBMITTED.value
    assert flagged.next_poll_at is not None  # still asked, on the usual backoff
    async with store.engine.connect() as conn:
        outcomes = set(await conn.scalars(sa.select(OBSERVATION.c.outcome)))
    assert outcomes == {"unrecognized"}
    assert len(sent) >= 2
    await _passes(store, clock, odd, passes=2, step_seconds=600)
    lost = await store.get(row.ref)
    assert lost is not None
    assert lost.state == State.LOST.value
    assert "provider answers unrecognized" in lost.result["lost_reason"]


async def test_a_readable_answer_clears_the_flag(store: LedgerStore, clock: FakeClock) -> None:
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    clock.advance(2)
    words = iter(["teleporting", "processing"])

    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "t-1", "status": next(words)})

    await _passes(store, clock, answer, passes=2, step_seconds=120)
    task = await store.get(row.ref)
    assert task is not None
    assert (task.attention, task.state) == (None, State.RUNNING.value)


async def test_an_unconfirmed_end_past_its_age_backs_off_then_stops_flagged(
    store: LedgerStore, clock: FakeClock
) -> None:
    """The poll storm: a final, unconfirmed task past its maximum age whose polls are
    refused. It must back off like any other and stop after a bounded number of tries."""
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    hint = Delivery(
        "evolink",
        "k1",
        b"{}",
        {},
        Auth.TOKEN,
        Observation("t-1", State.SUCCEEDED),
        clock(),
        row.ref,
    )
    await store.ingest([hint])
    clock.advance(700)  # past the maximum age of 600 s

    def gone(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "not found"})

    storm = await _passes(store, clock, gone, passes=400, step_seconds=5)
    assert len(storm) <= 6  # in 2,000 s, on the backoff; a storm was one poll a pass
    later = await _passes(store, clock, gone, passes=60, step_seconds=3600)
    task = await store.get(row.ref)
    assert task is not None
    assert len(storm) + len(later) <= UNCONFIRMED_POLL_LIMIT
    assert task.next_poll_at is None
    assert "never confirmed" in task.attention
    assert (task.state, task.confirmed) == (State.SUCCEEDED.value, False)


async def test_a_submission_left_sending_by_a_dead_reconciler_is_never_sent_again(
    store: LedgerStore, clock: FakeClock
) -> None:
    row = await store.register(NewTask("evolink", model="sora-2", submit=True))
    await store.claim_due("dead-reconciler", "evolink", 10, lease_seconds=30)
    assert await store.mark_sending("dead-reconciler", row.ref)  # its request then left
    clock.advance(31)  # its lease expires

    def created(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "t-1", "status": "pending"})

    sent = await _passes(store, clock, created, passes=3, step_seconds=1)
    task = await store.get(row.ref)
    assert task is not None
    assert [request.method for request in sent] == []
    assert task.submission == "unknown"


async def test_a_stopping_reconciler_gives_back_unsent_submissions_as_pending(
    store: LedgerStore, clock: FakeClock
) -> None:
    row = await store.register(NewTask("evolink", model="sora-2", submit=True))
    settings = _settings()
    async with ProviderClients.open(
        settings.providers.values(), transport=httpx.MockTransport(lambda r: httpx.Response(500))
    ) as clients:
        reconciler = Reconciler(settings, store, clients, clock=clock)
        reconciler.stopping.set()
        report = await reconciler.run_pass()
    task = await store.get(row.ref)
    assert task is not None
    assert report.skipped == 1
    assert task.submission == "pending"
    assert task.lease_owner is None


async def test_a_flagged_final_task_is_listed_with_the_stuck_ones(
    store: LedgerStore, clock: FakeClock
) -> None:
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    ended = Poll(row.ref, clock(), None, attention=UNCONFIRMED)
    done = await store.register(NewTask("evolink", provider_task_id="t-2"))
    await store.ingest([_hint(row.ref, "t-1", clock()), ended, _hint(done.ref, "t-2", clock())])
    await store.ingest(
        [
            Poll(
                done.ref,
                clock(),
                None,
                observation=Observation("t-2", State.SUCCEEDED, 100, ("https://cdn/x",)),
            )
        ]
    )
    stuck, _ = await store.list_tasks(TaskFilter(stuck=True), limit=10)
    assert [(t.ref, t.attention) for t in stuck] == [(row.ref, UNCONFIRMED)]


def _hint(ref: str, task_id: str, now: datetime) -> Delivery:
    observation = Observation(task_id, State.SUCCEEDED)
    return Delivery("evolink", f"k-{task_id}", b"{}", {}, Auth.TOKEN, observation, now, ref)


# -- tasks that cannot be polled, or wait past their time, are flagged with the last error --


async def test_a_task_of_a_provider_without_base_url_is_flagged_and_listed_stuck(
    store: LedgerStore, clock: FakeClock
) -> None:
    """The trap: `succeeded, confirmed: no` forever, missing from the stuck list."""
    provider = ProviderSettings("evolink", WireFormat.EVOLINK, expected_seconds=1)
    settings = Settings(callback_secrets=("s",), admin_token="t", providers={"evolink": provider})
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    await store.ingest([_hint(row.ref, "t-1", clock())])
    clock.advance(2)
    sent = await _passes(store, clock, _never, passes=1, step_seconds=1, settings=settings)
    task = await store.get(row.ref)
    assert task is not None
    assert sent == []
    assert (task.state, task.confirmed) == (State.SUCCEEDED.value, False)
    assert task.attention == (
        "not pollable: TASKLEDGER_PROVIDER_EVOLINK_BASE_URL is not set;"
        " last poll error: no base URL configured to poll"
    )
    stuck, _ = await store.list_tasks(TaskFilter(stuck=True), limit=10)
    assert [t.ref for t in stuck] == [row.ref]


async def test_an_open_task_of_a_provider_without_base_url_is_lost_saying_why(
    store: LedgerStore, clock: FakeClock
) -> None:
    provider = ProviderSettings("evolink", WireFormat.EVOLINK, expected_seconds=1)
    settings = Settings(callback_secrets=("s",), admin_token="t", providers={"evolink": provider})
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    clock.advance(2)
    await _passes(store, clock, _never, passes=1, step_seconds=86_400, settings=settings)
    await _passes(store, clock, _never, passes=1, step_seconds=1, settings=settings)
    task = await store.get(row.ref)
    assert task is not None
    assert task.state == State.LOST.value
    assert task.result is not None
    assert task.result["lost_reason"].startswith("no base URL configured to poll")


async def test_an_unconfirmed_end_whose_polls_fail_past_its_time_names_the_last_error(
    store: LedgerStore, clock: FakeClock
) -> None:
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    await store.ingest([_hint(row.ref, "t-1", clock())])
    clock.advance(3)

    def down(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "maintenance"})

    await _passes(store, clock, down, passes=1, step_seconds=1)
    task = await store.get(row.ref)
    assert task is not None
    assert task.attention is not None
    reason, mark, error = task.attention.partition("; last poll error: ")
    assert reason == "overdue: succeeded not confirmed after 3s (expected 1s)"
    assert mark
    assert "503" in error
    stuck, _ = await store.list_tasks(TaskFilter(stuck=True), limit=10)
    assert [t.ref for t in stuck] == [row.ref]


async def test_a_poll_error_within_the_expected_time_raises_no_flag(
    store: LedgerStore, clock: FakeClock
) -> None:
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    clock.advance(1)

    def down(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    await _passes(store, clock, down, passes=1, step_seconds=1, settings=_settings())
    task = await store.get(row.ref)
    assert task is not None
    assert task.attention is None


async def test_an_end_confirmed_after_a_polling_flag_leaves_the_stuck_list(
    store: LedgerStore, clock: FakeClock
) -> None:
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    await store.ingest([_hint(row.ref, "t-1", clock())])
    clock.advance(3)

    def completed(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "t-1", "status": "completed", "progress": 100})

    await _passes(store, clock, lambda _r: httpx.Response(503), passes=1, step_seconds=600)
    flagged = await store.get(row.ref)
    await _passes(store, clock, completed, passes=1, step_seconds=1)
    task = await store.get(row.ref)
    assert flagged is not None
    assert flagged.attention is not None
    assert flagged.attention.startswith("overdue")
    assert task is not None
    assert (task.state, task.confirmed) == (State.SUCCEEDED.value, True)
    stuck, _ = await store.list_tasks(TaskFilter(stuck=True), limit=10)
    assert stuck == []


async def test_a_polling_flag_never_hides_another_reason(
    store: LedgerStore, clock: FakeClock
) -> None:
    row = await store.register(NewTask("evolink", provider_task_id="t-1", expected_seconds=1))
    clock.advance(3)

    def odd(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "t-1", "status": "teleporting"})

    await _passes(store, clock, odd, passes=1, step_seconds=60)
    down = await _passes(store, clock, lambda _r: httpx.Response(503), passes=1, step_seconds=1)
    task = await store.get(row.ref)
    assert down  # polled, and failed, past its time
    assert task is not None
    assert task.attention is not None
    assert task.attention.startswith("provider answers unrecognized")


def _never(_request: httpx.Request) -> httpx.Response:
    raise AssertionError("a provider without a base URL is never called")
