"""The `/_sim/` control routes over real HTTP."""

from __future__ import annotations

import orjson

from simulator import Faults
from tests.simulator.support import FakeClock, Receiver, make_config, running


async def test_truth_lists_every_task_with_both_vocabularies() -> None:
    async with running(make_config()) as run:
        ids = [await run.submit(fmt) for fmt in ("openai", "apidot", "evolink")]
        truth = (await run.client.get("/_sim/truth")).json()
    assert truth["count"] == 3
    assert [task["task_id"] for task in truth["tasks"]] == ids
    assert {task["normalized"] for task in truth["tasks"]} <= {"succeeded", "failed", "cancelled"}


async def test_stats_count_submits_per_format() -> None:
    async with running(make_config()) as run:
        await run.submit("apidot")
        stats = (await run.client.get("/_sim/stats")).json()
    assert stats["submits_by_format"] == {
        "openai": 0,
        "apidot": 1,
        "evolink": 0,
        "replicate": 0,
        "fal": 0,
        "kie": 0,
    }
    assert "poll_times" not in stats


async def test_stats_include_poll_times_when_asked() -> None:
    async with running(make_config()) as run:
        task_id = await run.submit("openai")
        await run.status("openai", task_id)
        stats = (await run.client.get("/_sim/stats", params={"poll_times": "1"})).json()
    assert len(stats["poll_times"]["openai"]) == 1


async def test_posting_faults_replaces_only_the_named_fields() -> None:
    async with running(make_config(faults=Faults(drop_rate=0.5))) as run:
        answer = await run.client.post("/_sim/faults", json={"down": True, "poll_500_rate": 1})
        submit = await run.client.post("/openai/v1/videos", json={"model": "m", "prompt": "p"})
    assert answer.json()["down"] is True
    assert answer.json()["drop_rate"] == 0.5
    assert submit.status_code == 503


async def test_posting_reset_clears_every_fault() -> None:
    async with running(make_config(faults=Faults(drop_rate=0.5, down=True))) as run:
        answer = await run.client.post("/_sim/faults", json={"reset": True, "poll_429_rate": 0.1})
        current = (await run.client.get("/_sim/faults")).json()
    assert answer.json() == current
    assert (current["drop_rate"], current["down"], current["poll_429_rate"]) == (0.0, False, 0.1)


async def test_posting_an_unknown_fault_answers_400() -> None:
    async with running(make_config()) as run:
        answer = await run.client.post("/_sim/faults", json={"explode_rate": 1})
    assert answer.status_code == 400
    assert answer.json()["field"] == "explode_rate"


async def test_posting_a_rate_out_of_range_answers_400() -> None:
    async with running(make_config()) as run:
        answer = await run.client.post("/_sim/faults", json={"drop_rate": 2})
    assert answer.status_code == 400


async def test_finish_ends_the_task_now_and_sends_its_callback(
    receiver: Receiver, clock: FakeClock
) -> None:
    async with running(make_config(receiver), clock=clock) as run:
        task_id = await run.submit("evolink", f"{receiver.url}/callbacks/evolink/token")
        clock.advance(0.01)
        path = f"/_sim/tasks/evolink/{task_id}/finish"
        answer = await run.client.post(path, json={"outcome": "cancelled"})
        (callback,) = await receiver.wait_for(1)
    assert answer.json()["normalized"] == "cancelled"
    assert orjson.loads(callback.body)["error"]["code"] == "request_cancelled"


async def test_finish_maps_cancelled_to_failed_outside_evolink(clock: FakeClock) -> None:
    async with running(make_config(), clock=clock) as run:
        task_id = await run.submit("apidot")
        clock.advance(0.01)
        answer = await run.client.post(
            f"/_sim/tasks/apidot/{task_id}/finish", json={"outcome": "cancelled"}
        )
    assert (answer.json()["final_state"], answer.json()["normalized"]) == ("failed", "failed")


async def test_finish_of_an_ended_task_answers_409(clock: FakeClock) -> None:
    async with running(make_config(), clock=clock) as run:
        task_id = await run.submit("openai")
        clock.advance(5.0)
        answer = await run.client.post(f"/_sim/tasks/openai/{task_id}/finish")
    assert answer.status_code == 409


async def test_finish_of_an_unknown_task_answers_404() -> None:
    async with running(make_config()) as run:
        answer = await run.client.post("/_sim/tasks/openai/video_nothing/finish")
    assert answer.status_code == 404


async def test_finish_with_an_unknown_outcome_answers_400(clock: FakeClock) -> None:
    async with running(make_config(), clock=clock) as run:
        task_id = await run.submit("openai")
        clock.advance(0.01)
        answer = await run.client.post(
            f"/_sim/tasks/openai/{task_id}/finish", json={"outcome": "exploded"}
        )
    assert answer.status_code == 400


async def test_sent_lists_each_message_with_its_answers(receiver: Receiver) -> None:
    async with running(make_config(receiver)) as run:
        task_id = await run.submit("evolink", f"{receiver.url}/callbacks/evolink/t")
        await receiver.wait_for(1)
        await run.sim.drain()
        sent = (await run.client.get("/_sim/sent")).json()
    assert sent["count"] == 1
    (message,) = sent["messages"]
    assert (message["task_id"], message["names"], message["authentic"]) == (task_id, task_id, True)
    assert message["answers"] == [200]


async def test_tricks_are_set_like_any_fault() -> None:
    async with running(make_config()) as run:
        answer = await run.client.post("/_sim/faults", json={"wrong_task_id_rate": 0.3})
    assert answer.json()["wrong_task_id_rate"] == 0.3
    assert answer.json()["envelope_rate"] == 0.0
