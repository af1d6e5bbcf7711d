"""Control and inspection routes under `/_sim/`: ground truth, stats, messages sent, faults,
forced finishes."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from simulator.config import FORMATS, Faults, SimulatorError, faults_as_dict
from simulator.lifecycle import ground_truth
from simulator.providers import json_response
from simulator.simulation import Simulator, TaskEndedError, UnknownTaskError


class ControlRoutes:
    """Test-side view of one `Simulator`; never reached by the system under test."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/_sim/truth", self.truth, methods=["GET"]),
            Route("/_sim/stats", self.stats, methods=["GET"]),
            Route("/_sim/sent", self.sent, methods=["GET"]),
            Route("/_sim/faults", self.faults, methods=["GET"]),
            Route("/_sim/faults", self.change_faults, methods=["POST"]),
            Route("/_sim/tasks/{fmt}/{task_id}/finish", self.finish, methods=["POST"]),
        ]

    async def truth(self, request: Request) -> Response:
        """Every task's truth, with its media's sizes, SHA-256s, expiry and fault."""
        tasks = await self.sim.hashed_truth()
        return json_response({"tasks": tasks, "count": len(tasks)})

    async def stats(self, request: Request) -> Response:
        detail = request.query_params.get("poll_times", "") in ("1", "true")
        return json_response(self.sim.stats(poll_times=detail))

    async def sent(self, request: Request) -> Response:
        """Every distinct callback message sent, its authenticity and its attempts' answers."""
        messages = self.sim.sent()
        return json_response({"messages": messages, "count": len(messages)})

    async def faults(self, request: Request) -> Response:
        return json_response(faults_as_dict(self.sim.faults()))

    async def change_faults(self, request: Request) -> Response:
        """Body: the fault fields to replace; `"reset": true` starts from no faults at all."""
        try:
            changes = await read_object(request)
            if changes.pop("reset", False) is True:
                self.sim.set_faults(Faults())
            faults = self.sim.update_faults(changes)
        except SimulatorError as exc:
            return json_response({"error": str(exc), "field": exc.field_name}, 400)
        return json_response(faults_as_dict(faults))

    async def finish(self, request: Request) -> Response:
        """Optional body `{"outcome": "succeeded|failed|cancelled"}`; answers the truth."""
        fmt, task_id = request.path_params["fmt"], request.path_params["task_id"]
        try:
            body = await read_object(request)
            if fmt not in FORMATS:
                raise UnknownTaskError(f"unknown format {fmt}")
            task = self.sim.finish(fmt, task_id, body.get("outcome"))
        except UnknownTaskError as exc:
            return json_response({"error": str(exc)}, 404)
        except TaskEndedError as exc:
            return json_response({"error": str(exc)}, 409)
        except SimulatorError as exc:
            return json_response({"error": str(exc), "field": exc.field_name}, 400)
        return json_response(ground_truth(task, self.sim.clock()))


async def read_object(request: Request) -> dict[str, Any]:
    """The JSON object in the body (an empty body reads as `{}`)."""
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise SimulatorError("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise SimulatorError("the body must be a JSON object")
    return body
