"""Routes of a described gateway: submit and status at the paths its description names,
with its own authentication header, required headers, words and envelope."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from simulator import shapes
from simulator.described import Description
from simulator.lifecycle import SimTask
from simulator.providers import ProviderRoutes, json_response
from simulator.simulation import Simulator
from simulator.submissions import Submission, callback_url_of, require_object, require_text


class DescribedRoutes(ProviderRoutes):
    """One described gateway, mounted at `/{name}`."""

    def __init__(self, sim: Simulator, description: Description) -> None:
        super().__init__(sim)
        self.description = description
        self.fmt = description.name

    def routes(self) -> list[BaseRoute]:
        return [
            Route(self.description.submit_path, self.submit, methods=["POST"]),
            Route(self.description.status_path, self.status, methods=["GET"]),
        ]

    def error(
        self, status_code: int, code: str, message: str, retry_after_s: int | None = None
    ) -> Response:
        headers = {"retry-after": str(retry_after_s)} if retry_after_s is not None else None
        return json_response(
            shapes.error(self.description, status_code, message), status_code, headers
        )

    def guard(self, request: Request) -> Response | None:
        """As every provider's, but with the description's own key header if it has one."""
        header = self.description.auth_header
        if header is None or self.sim.faults().down:
            return super().guard(request)
        key, expected = request.headers.get(header, "").strip(), self.sim.config.api_key
        if not key or (expected is not None and not hmac.compare_digest(key, expected)):
            return self.error(401, "authentication_error", "Missing or invalid API key.")
        return None

    async def submit(self, request: Request) -> Response:
        task = await self.create(request, self.parse)
        if isinstance(task, Response):
            return task
        return json_response(shapes.created(task, self.description), self.description.submit_code)

    def parse(self, body: Any) -> Submission:
        """The prompt at the top or under `input`; the callback URL where described."""
        fields = require_object(body)
        inputs = (
            require_object(fields.get("input"), "input")
            if self.description.nested_input
            else fields
        )
        callback_in = self.description.callback_in
        callback = callback_url_of(fields, callback_in) if callback_in else None
        model = fields.get("model")
        request = dict(inputs)
        return Submission(
            str(model or "default"), request, callback, require_text(inputs, "prompt")
        )

    async def status(self, request: Request) -> Response:
        """A poll, refused with 400 when a required header is missing or wrong."""
        for name, value in self.description.required_headers.items():
            if request.headers.get(name) != value:
                return self.error(400, "invalid_request", f"{name}: {value} is required.")
        return await self.poll(request)

    def answer(self, task: SimTask, now: float) -> Response:
        return json_response(self.sim.render(task, now))
