"""Described gateways: served from a description alone, with their own words and shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator import Faults, SimulatorError
from simulator.described import load_description, parse_description
from simulator.shapes import place
from tests.simulator.support import Receiver, make_config, running, truth_of, wait_until

DESCRIPTIONS = Path(__file__).parent / "descriptions"
MINT = str(DESCRIPTIONS / "moviemint.json")
STILL = str(DESCRIPTIONS / "stillpoll.json")


def test_place_builds_nested_objects_and_lists() -> None:
    body: dict[str, Any] = {}
    place(body, "result.outputs[].href", ["a", "b"])
    place(body, "job.artifacts[]", ["c"])
    place(body, "result.phase", "x")
    assert body == {
        "result": {"outputs": [{"href": "a"}, {"href": "b"}], "phase": "x"},
        "job": {"artifacts": ["c"]},
    }


def test_a_description_is_checked() -> None:
    data = load_description(MINT)
    assert parse_description(data).status_path == "/api/v2/renders/{task_id}"
    with pytest.raises(SimulatorError):
        parse_description({**data, "words": {"queued": "waiting"}})
    with pytest.raises(SimulatorError):
        parse_description({**data, "name": "openai"})
    with pytest.raises(SimulatorError):
        parse_description({**data, "colour": "blue"})


async def test_a_described_gateway_submits_calls_back_and_answers_polls(
    receiver: Receiver,
) -> None:
    config = make_config(described=(MINT,), faults=Faults(duplicate_rate=1.0), api_key="k")
    async with running(config) as run:
        mint = {"x-mint-key": "k", "authorization": ""}
        body = {"model": "m", "input": {"prompt": "p"}, "notify_url": f"{receiver.url}/cb"}
        refused = await run.client.post("/moviemint/api/v2/renders", json=body)
        assert refused.status_code == 401
        assert refused.json()["ok_code"] == 401
        answer = await run.client.post("/moviemint/api/v2/renders", json=body, headers=mint)
        assert answer.status_code == 200
        render_id = answer.json()["result"]["render_id"]
        assert answer.json()["ok_code"] == 0
        await receiver.wait_for(2)  # the terminal callback, duplicated
        truth = truth_of(run.sim, render_id)
        assert truth["final_state"] in ("delivered", "broken")
        callback = orjson.loads(receiver.requests[0].body)
        status = await run.client.get(f"/moviemint/api/v2/renders/{render_id}", headers=mint)
        assert status.json() == callback
        assert callback["result"]["phase"] == truth["final_state"]
        urls = [item["href"] for item in callback["result"].get("outputs", [])]
        assert urls == next(t for t in run.sim.truth() if t["task_id"] == render_id)["result_urls"]


async def test_a_poll_only_gateway_needs_its_version_header() -> None:
    config = make_config(described=(STILL,))
    async with running(config) as run:
        created = await run.client.post("/stillpoll/jobs", json={"prompt": "p"})
        assert created.status_code == 201
        job_id = created.json()["job"]["id"]
        bare = await run.client.get(f"/stillpoll/jobs/{job_id}")
        assert bare.status_code == 400
        version = {"x-api-version": "2026-01-01"}
        first = await run.client.get(f"/stillpoll/jobs/{job_id}", headers=version)
        assert first.json()["job"]["state"] in ("PENDING", "ACTIVE", "DONE", "ERRORED")
        await wait_until(lambda: truth_of(run.sim, job_id)["terminal"])
        last = (await run.client.get(f"/stillpoll/jobs/{job_id}", headers=version)).json()
        assert last["job"]["state"] == truth_of(run.sim, job_id)["final_state"]
        assert run.sim.stats()["submits_by_format"]["stillpoll"] == 1
