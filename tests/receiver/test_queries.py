"""The read side through real HTTP: task lists, a task's story, audit, export, OpenAPI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import urlsplit

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ops.cli import main
from schemas.ledger import Poll
from schemas.states import State
from schemas.store import LedgerStore, queries
from schemas.wire import Observation
from tests.conftest import FakeClock
from tests.support.senders import apidot_body, openai_event, signed_headers
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for

JSON = {"content-type": "application/json"}


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    async with running_service(settings_for(database_url), clock) as service:
        yield service


async def callback(service: Service, task: dict[str, object], body: bytes) -> int:
    path = urlsplit(str(task["callback_url"])).path
    return (await service.http.post(path, content=body, headers=JSON)).status_code


async def poll(
    engine: AsyncEngine, clock: FakeClock, ref: str, state: State, task_id: str = "t-story"
) -> None:
    store = LedgerStore(engine, clock)
    observation = Observation(task_id, state, 100)
    await store.ingest([Poll(ref, clock(), None, observation, 200, "{}")])


async def test_task_story_shows_duplicates_conflict_and_recovery_in_order(
    service: Service, clock: FakeClock, engine: AsyncEngine
) -> None:
    task = await service.register("apidot", provider_task_id="t-story")
    running = apidot_body("t-story", "running", 20)
    assert [await callback(service, task, running) for _ in range(3)] == [200, 200, 200]
    clock.advance(5)
    assert await callback(service, task, apidot_body("t-story", "failed")) == 200
    clock.advance(5)
    await poll(engine, clock, str(task["ref"]), State.SUCCEEDED)
    shown = await service.task(str(task["ref"]))
    timeline = shown["timeline"]
    assert [(d["state"], d["duplicate_count"], d["auth"]) for d in timeline["deliveries"]] == [
        ("running", 2, "token"),
        ("failed", 0, "token"),
    ]
    assert [(p["state"], p["outcome"]) for p in timeline["polls"]] == [("succeeded", "conflict")]
    assert [(t["to_state"], t["source"]) for t in timeline["transitions"]] == [
        ("submitted", "api"),
        ("running", "webhook"),
        ("failed", "webhook"),
        ("succeeded", "poll"),
    ]
    assert (shown["state"], shown["conflict"], shown["recovered"]) == ("succeeded", True, False)


async def test_a_task_story_shows_the_newest_of_each_kind_and_counts_the_rest(
    service: Service,
    clock: FakeClock,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A task that gets callbacks without end has a bounded page: the newest entries of each
    kind, and how many older ones were left out (an unread delivery counted once, though two
    reads find it)."""
    monkeypatch.setattr(queries, "TIMELINE_MAX", 3)
    task = await service.register("apidot", provider_task_id="t-long")
    ref = str(task["ref"])
    for progress in range(1, 6):
        clock.advance(1)
        assert await callback(service, task, apidot_body("t-long", "running", progress)) == 200
    clock.advance(1)
    assert await callback(service, task, b'{"code": 200, "data": {"task_id": "t-long"}}') == 200
    for state in (State.RUNNING, State.RUNNING, State.RUNNING, State.SUCCEEDED):
        clock.advance(1)
        await poll(engine, clock, ref, state, "t-long")
    timeline = (await service.task(ref))["timeline"]
    assert [(d["state"], d["outcome"]) for d in timeline["deliveries"]] == [
        ("running", "applied"),
        ("running", "applied"),
        (None, "unrecognized"),
    ]
    assert [p["state"] for p in timeline["polls"]] == ["running", "running", "succeeded"]
    assert [t["to_state"] for t in timeline["transitions"]] == ["submitted", "running", "succeeded"]
    assert timeline["omitted"] == {"deliveries": 3, "polls": 1, "transitions": 0}
    capsys.readouterr()
    argv = ["show", ref, "--url", service.base_url, "--token", ADMIN_TOKEN]
    assert await asyncio.to_thread(main, argv) == 0
    assert "older entries not shown: deliveries 3, polls 1" in capsys.readouterr().out
    untouched = await service.register("apidot", provider_task_id="t-short")
    shown = (await service.task(str(untouched["ref"])))["timeline"]
    assert shown["omitted"] == {"deliveries": 0, "polls": 0, "transitions": 0}


async def test_task_list_filters_and_pages_by_cursor(service: Service, clock: FakeClock) -> None:
    refs = []
    for _ in range(5):
        refs.append(str((await service.register("apidot"))["ref"]))
        clock.advance(1)
    await service.register("evolink")
    seen: list[str] = []
    cursor = ""
    for _ in range(5):
        page = (
            await service.http.get(
                "/v1/tasks",
                params={"provider": "apidot", "limit": 2, "cursor": cursor},
                headers=service.admin,
            )
        ).json()
        seen += [t["ref"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(refs))


async def test_task_list_rejects_a_forged_cursor(service: Service) -> None:
    answer = await service.http.get("/v1/tasks", params={"cursor": "!!"}, headers=service.admin)
    assert answer.status_code == 422


async def test_audit_matches_a_hand_built_scenario(
    service: Service, clock: FakeClock, engine: AsyncEngine
) -> None:
    start = clock()
    ok = await service.register(
        "apidot", provider_task_id="a-ok", request={"input": {"duration": 8, "resolution": "720p"}}
    )
    clock.advance(100)
    assert await callback(service, ok, apidot_body("a-ok", "finished", 100)) == 200
    assert await callback(service, ok, apidot_body("a-ok", "finished", 100)) == 200
    missed = await service.register(
        "apidot",
        provider_task_id="t-story",
        request={"input": {"duration": 4, "resolution": "720p"}},
    )
    clock.advance(200)
    await poll(engine, clock, str(missed["ref"]), State.SUCCEEDED)
    await service.register("apidot", provider_task_id="a-open")
    event = openai_event("video_unknown")
    await service.http.post(
        "/webhooks/openai", content=event, headers=signed_headers(event, clock())
    )
    until = (clock() + timedelta(seconds=1)).isoformat()
    answer = await service.http.get(
        "/v1/audit", params={"since": start.isoformat(), "until": until}, headers=service.admin
    )
    providers = {p["provider"]: p for p in answer.json()["providers"]}
    apidot = providers["apidot"]
    assert apidot["by_state"] == {"submitted": 1, "succeeded": 2}
    assert (apidot["tasks"], apidot["terminal"], apidot["recovered_by_poll"]) == (3, 2, 1)
    assert (apidot["missed_callback_rate"], apidot["duplicates"], apidot["conflicts"]) == (
        0.5,
        1,
        0,
    )
    assert apidot["time_to_terminal_seconds"] == {"median": 100.0, "p95": 200.0}
    assert apidot["billable_seconds"] == {"720p": 12.0}
    assert providers["openai"]["unmatched"] == 1


async def test_export_streams_every_task_as_json_lines_and_csv(service: Service) -> None:
    for i in range(7):
        await service.register("evolink", provider_task_id=f"e-{i}")
    jsonl = await service.http.get("/v1/export", params={"format": "jsonl"}, headers=service.admin)
    rows = [orjson.loads(line) for line in jsonl.text.splitlines()]
    csv = await service.http.get("/v1/export", params={"format": "csv"}, headers=service.admin)
    assert sorted(r["provider_task_id"] for r in rows) == [f"e-{i}" for i in range(7)]
    assert len(csv.text.strip().splitlines()) == 8


@pytest.mark.parametrize(
    "path", ["/v1/tasks", "/v1/changes", "/v1/audit", "/v1/export", "/v1/tasks/tl_x"]
)
async def test_read_routes_need_the_admin_token(service: Service, path: str) -> None:
    assert (await service.http.get(path)).status_code == 401


async def test_openapi_describes_every_route(service: Service) -> None:
    from receiver.app import routes

    spec = (await service.http.get("/openapi.json")).json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    served = {(r.path, m.lower()) for r in routes() for m in (r.methods or ()) if m != "HEAD"}
    assert spec["openapi"] == "3.1.0"
    assert served - documented == set()


async def test_taskledger_show_tells_the_same_story_in_order(
    service: Service, clock: FakeClock, engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    task = await service.register("apidot", provider_task_id="t-story")
    running = apidot_body("t-story", "running", 20)
    for _ in range(3):
        await callback(service, task, running)
    clock.advance(5)
    await callback(service, task, apidot_body("t-story", "failed"))
    clock.advance(5)
    await poll(engine, clock, str(task["ref"]), State.SUCCEEDED)
    capsys.readouterr()
    argv = ["show", str(task["ref"]), "--url", service.base_url, "--token", ADMIN_TOKEN]
    assert await asyncio.to_thread(main, argv) == 0
    shown = capsys.readouterr().out
    print(shown)
    story = [
        "registered",
        "duplicates=2",
        "submitted → running via webhook",
        "running → failed via webhook",
        "outcome=conflict",
        "failed → succeeded via poll",
    ]
    positions = [shown.find(mark) for mark in story]
    assert -1 not in positions, (story, positions)
    assert positions == sorted(positions)
    assert "callbacks/apidot" not in shown
