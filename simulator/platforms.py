"""Routes of the model platforms: Replicate predictions, the fal.ai queue API and kie.ai's
Market API, each speaking its own wire format (see PROVIDERS.md)."""

from __future__ import annotations

import contextlib
import functools

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from simulator import fal, kie, replicate
from simulator.lifecycle import SimTask
from simulator.providers import ProviderRoutes, json_response
from simulator.simulation import TaskEndedError
from simulator.submissions import parse_fal, parse_replicate

FAL_REQUEST = "/{owner}/{app}/requests/{task_id}"


class ReplicateRoutes(ProviderRoutes):
    """`/v1/predictions` create, get and cancel (also per model), and the webhook secret."""

    fmt = "replicate"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/predictions", self.submit, methods=["POST"]),
            Route("/v1/models/{owner}/{name}/predictions", self.submit_to_model, methods=["POST"]),
            Route("/v1/predictions/{task_id}", self.poll, methods=["GET"]),
            Route("/v1/predictions/{task_id}/cancel", self.cancel, methods=["POST"]),
            Route("/v1/webhooks/default/secret", self.secret, methods=["GET"]),
        ]

    async def submit(self, request: Request) -> Response:
        """A prediction of the model version named in the body's `version`."""
        return self.created(await self.create(request))

    async def submit_to_model(self, request: Request) -> Response:
        """A prediction of an official model's latest version, named by the path."""
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        return self.created(
            await self.create(request, functools.partial(parse_replicate, model=model))
        )

    def created(self, task: SimTask | Response) -> Response:
        if isinstance(task, Response):
            return task
        at = task.schedule.submitted_at
        body = replicate.prediction(task, at, self.sim.config, self.sim.media.links)
        return json_response(body, 201)

    async def cancel(self, request: Request) -> Response:
        """Cancel a prediction that has not ended; answers the prediction either way."""
        refusal = self.guard(request)
        if refusal is not None:
            return refusal
        task = self.sim.get(self.fmt, request.path_params["task_id"])
        if task is None:
            return self.error(404, "Not found", "The requested resource could not be found.")
        with contextlib.suppress(TaskEndedError):  # an ended prediction is answered as it is
            self.sim.finish(self.fmt, task.task_id, "cancelled")
        return json_response(self.sim.render(task, self.sim.clock()))

    async def secret(self, request: Request) -> Response:
        """The account's webhook signing secret: `{"key": "whsec_…"}`."""
        refusal = self.guard(request)
        if refusal is not None:
            return refusal
        return json_response({"key": self.sim.replicate_secret})


class FalRoutes(ProviderRoutes):
    """The queue: submit to `/{owner}/{app}[/{subpath}]`, then status, result and cancel."""

    fmt = "fal"
    auth_scheme = "key"

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{FAL_REQUEST}/status", self.poll, methods=["GET"]),
            Route(FAL_REQUEST, self.fetch_result, methods=["GET"]),
            Route(f"{FAL_REQUEST}/cancel", self.cancel, methods=["PUT"]),
            Route("/{model:path}", self.submit, methods=["POST"]),
        ]

    async def submit(self, request: Request) -> Response:
        """The body is the model's input; `?fal_webhook=` says where the webhook goes."""
        model = request.path_params["model"].strip("/")
        if len(model.split("/")) < 2:
            return self.error(404, "not_found", f"No app at {model!r}.")
        webhook = request.query_params.get("fal_webhook")
        task = await self.create(
            request, functools.partial(parse_fal, model=model, webhook=webhook)
        )
        if isinstance(task, Response):
            return task
        return json_response(fal.submitted(task))

    def answer(self, task: SimTask, now: float) -> Response:
        return json_response(fal.status(task, now, self.sim.queue_position(task, now)))

    async def fetch_result(self, request: Request) -> Response:
        """The result (or its error) once completed; 400 before that. A poll like the status."""
        return await self.poll(request, self.result)

    def result(self, task: SimTask, now: float) -> Response:
        if task.phase(now) != "terminal":
            return json_response({"detail": "Request is still in progress"}, 400)
        status_code, body = fal.result(task, self.sim.media.links)
        return json_response(body, status_code)

    async def cancel(self, request: Request) -> Response:
        """202 while it has not completed, else 400 `ALREADY_COMPLETED`."""
        refusal = self.guard(request)
        if refusal is not None:
            return refusal
        task_id = request.path_params["task_id"]
        if self.sim.get(self.fmt, task_id) is None:
            return self.error(404, "not_found", f"Request {task_id} was not found.")
        try:
            self.sim.finish(self.fmt, task_id, "cancelled")
        except TaskEndedError:
            return json_response({"status": "ALREADY_COMPLETED"}, 400)
        return json_response({"status": "CANCELLATION_REQUESTED"}, 202)


class KieRoutes(ProviderRoutes):
    """`/api/v1/jobs/createTask`, `/api/v1/jobs/recordInfo?taskId=` and the download links."""

    fmt = "kie"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/jobs/createTask", self.submit, methods=["POST"]),
            Route("/api/v1/jobs/recordInfo", self.poll, methods=["GET"]),
            Route("/api/v1/common/download-url", self.download_url, methods=["POST"]),
        ]

    async def submit(self, request: Request) -> Response:
        task = await self.create(request)
        if isinstance(task, Response):
            return task
        return json_response(kie.created(task))

    def task_id_of(self, request: Request) -> str:
        return request.query_params.get("taskId", "")

    async def download_url(self, request: Request) -> Response:
        """`{"url": <a result URL>}` → `{"code":200,"data":<a link valid 20 minutes>}`;
        422 unless the URL is a kie task's result URL that has not expired."""
        refusal = self.guard(request)
        if refusal is not None:
            return refusal
        try:
            url = orjson.loads(await request.body()).get("url")
        except (orjson.JSONDecodeError, AttributeError):
            url = None
        now = self.sim.clock()
        found = self.live_result(url, now) if isinstance(url, str) else None
        if found is None:
            return self.error(422, "invalid_request", "url must be a live result URL of a task.")
        link = kie.download_link(*found, now, self.sim.media.links)
        return json_response({"code": 200, "msg": "success", "data": link})

    def live_result(self, url: str, now: float) -> tuple[SimTask, str] | None:
        """The kie task and file extension a signed, unexpired result URL names."""
        found = self.sim.media.links.read(url)
        if found is None or found[0] != self.fmt or now >= found[2]:
            return None
        task_id, _, extension = found[1].rpartition(".")
        task = self.sim.get(self.fmt, task_id)
        return None if task is None else (task, extension)
