"""Provider routes: OpenAI videos, APIDot/Vidgo and EvoLink, each speaking its own wire format,
and what every format's routes share (the platforms' are in `simulator.platforms`).

Every route answers 503 while the simulator is down and 401 without an API key (a bearer
token, or fal's `Key`); status polls also pass the poll faults, and are counted (with their
in-flight concurrency). OpenAI's content downloads suffer the media faults instead (see
`simulator.downloads`).
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from simulator import downloads, formats
from simulator.lifecycle import SimTask
from simulator.media import VIDEO
from simulator.simulation import Simulator
from simulator.submissions import PARSERS, Submission, SubmissionError

MAX_LIST_LIMIT = 100


def json_response(
    body: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status_code, headers, media_type="application/json")


def bearer_ok(request: Request, api_key: str | None, expected_scheme: str = "bearer") -> bool:
    """A non-empty token under `expected_scheme`, equal to `api_key` when one is configured."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != expected_scheme or not token.strip():
        return False
    return api_key is None or hmac.compare_digest(token.strip(), api_key)


class ProviderRoutes:
    """What every format shares: guards, submit parsing, counted and faulted polls."""

    fmt = ""
    auth_scheme = "bearer"

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def error(
        self, status_code: int, code: str, message: str, retry_after_s: int | None = None
    ) -> Response:
        headers = {"retry-after": str(retry_after_s)} if retry_after_s is not None else None
        return json_response(
            formats.error_body(self.fmt, status_code, code, message), status_code, headers
        )

    def guard(self, request: Request) -> Response | None:
        """503 while down, 401 without a valid bearer key, else None."""
        if self.sim.faults().down:
            return self.error(503, "service_unavailable", "The service is temporarily unavailable.")
        if not bearer_ok(request, self.sim.config.api_key, self.auth_scheme):
            return self.error(401, "authentication_error", "Missing or invalid API key.")
        return None

    async def create(
        self, request: Request, parse: Callable[[Any], Submission] | None = None
    ) -> SimTask | Response:
        """The new task, or the error answer to a refused or malformed submit."""
        refusal = self.guard(request)
        if refusal is not None:
            return refusal
        try:
            submission = (parse or PARSERS[self.fmt])(orjson.loads(await request.body()))
        except orjson.JSONDecodeError:
            return self.error(400, "invalid_request", "The body is not valid JSON.")
        except SubmissionError as exc:
            return self.error(400, "invalid_request", str(exc))
        server = f"{request.url.scheme}://{request.url.netloc}"
        submission = dataclasses.replace(submission, endpoint=f"{server}/{self.fmt}", server=server)
        return self.sim.submit(self.fmt, submission)

    def task_id_of(self, request: Request) -> str:
        return str(request.path_params["task_id"])

    def answer(self, task: SimTask, now: float) -> Response:
        """A found task's poll answer: its status body."""
        return json_response(self.sim.render(task, now))

    async def poll(
        self, request: Request, answer: Callable[[SimTask, float], Response] | None = None
    ) -> Response:
        """`GET` a task's status (or what `answer` says of it), counted per task while in flight."""
        task_id = self.task_id_of(request)
        key = self.sim.counters.poll_started(self.fmt, task_id, self.sim.clock())
        status_code = 500
        try:
            response = await self._answer_poll(request, task_id, answer or self.answer)
            status_code = response.status_code
            return response
        finally:
            self.sim.counters.poll_finished(key, status_code)

    async def _answer_poll(
        self, request: Request, task_id: str, answer: Callable[[SimTask, float], Response]
    ) -> Response:
        counts = self.sim.counters.polls
        refusal = self.guard(request)
        if refusal is not None:
            counts["unavailable" if refusal.status_code == 503 else "unauthorized"] += 1
            return refusal
        refused = await self.sim.polls.check(self.fmt, request)
        if refused is not None:
            return self.error(
                refused.status_code, refused.code, refused.message, refused.retry_after_s
            )
        task = self.sim.get(self.fmt, task_id)
        if task is None:
            counts["not_found"] += 1
            return self.error(404, "not_found", f"Task {task_id} was not found.")
        counts["ok"] += 1
        return answer(task, self.sim.clock())


class OpenAIRoutes(ProviderRoutes):
    """`/v1/videos` create, retrieve, list and content, as the OpenAI Videos API."""

    fmt = "openai"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/videos", self.submit, methods=["POST"]),
            Route("/v1/videos", self.list_videos, methods=["GET"]),
            Route("/v1/videos/{task_id}", self.poll, methods=["GET"]),
            Route("/v1/videos/{task_id}/content", self.content, methods=["GET"]),
        ]

    async def submit(self, request: Request) -> Response:
        task = await self.create(request)
        if isinstance(task, Response):
            return task
        video = formats.openai_video(task, task.schedule.submitted_at, self.sim.media.links)
        return json_response(video)

    async def list_videos(self, request: Request) -> Response:
        """`?after=&limit=&order=asc|desc` → `{object, data, first_id, last_id, has_more}`."""
        refusal = self.guard(request)
        if refusal is not None:
            return refusal
        query = request.query_params
        order, after = query.get("order", "desc"), query.get("after")
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            return self.error(400, "invalid_request", "limit must be an integer.")
        if order not in ("asc", "desc") or not 1 <= limit <= MAX_LIST_LIMIT:
            return self.error(400, "invalid_request", "Bad order or limit.")
        return json_response(self._page(order, after, limit))

    def _page(self, order: str, after: str | None, limit: int) -> dict[str, Any]:
        tasks = self.sim.tasks(self.fmt)
        if order == "desc":
            tasks.reverse()
        ids = [task.task_id for task in tasks]
        start = ids.index(after) + 1 if after in ids else 0
        page = tasks[start : start + limit]
        now = self.sim.clock()
        return {
            "object": "list",
            "data": [formats.openai_video(task, now, self.sim.media.links) for task in page],
            "first_id": page[0].task_id if page else None,
            "last_id": page[-1].task_id if page else None,
            "has_more": start + limit < len(tasks),
        }

    async def content(self, request: Request) -> Response:
        """`?variant=video|thumbnail|spritesheet` of a completed video until its `expires_at`
        (then 410 Gone); the download may suffer the video's media fault."""
        refusal = self.guard(request)
        if refusal is not None:
            return refusal
        task = self.sim.get(self.fmt, request.path_params["task_id"])
        now = self.sim.clock()
        if task is None or task.state_word(now) != "completed":
            return self.error(404, "not_found", "No finished video with this id.")
        file = self.sim.media.file(task, request.query_params.get("variant", VIDEO))
        if file is None:
            return self.error(400, "invalid_request", "Unknown variant.")
        if now >= self.sim.media.links.expires_at(task):
            self.sim.counters.downloads["expired"] += 1
            return self.error(410, "video_expired", "The video's content has expired.")
        return downloads.answer(self.sim, task, file, self.error)


class ApidotRoutes(ProviderRoutes):
    """`/api/generate/submit` and `/api/generate/status/{task_id}`, as APIDot and Vidgo."""

    fmt = "apidot"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/generate/submit", self.submit, methods=["POST"]),
            Route("/api/generate/status/{task_id}", self.poll, methods=["GET"]),
        ]

    async def submit(self, request: Request) -> Response:
        task = await self.create(request)
        if isinstance(task, Response):
            return task
        return json_response(formats.apidot_submitted(task))


class EvolinkRoutes(ProviderRoutes):
    """`/v1/videos/generations` and `/v1/tasks/{task_id}`, as EvoLink and AI Video API."""

    fmt = "evolink"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/videos/generations", self.submit, methods=["POST"]),
            Route("/v1/tasks/{task_id}", self.poll, methods=["GET"]),
        ]

    async def submit(self, request: Request) -> Response:
        task = await self.create(request)
        if isinstance(task, Response):
            return task
        body = formats.evolink_task(task, task.schedule.submitted_at, self.sim.media.links)
        return json_response(body)
