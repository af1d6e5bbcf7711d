"""The Starlette app factory: one server hosting every provider and the `/_sim/` controls.

Provider base URLs are `{server}/{format}`: `openai`, `apidot`, `evolink`, `replicate`,
`fal` and `kie`, and each described gateway's name; fal's JWKS is at `{server}{fal_jwks_path}`;
result media at `{server}/media/{format}/{file}?expires=&sig=` (see `simulator.media`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from simulator.config import SimConfig
from simulator.control import ControlRoutes
from simulator.downloads import MediaRoutes
from simulator.gateways import DescribedRoutes
from simulator.platforms import FalRoutes, KieRoutes, ReplicateRoutes
from simulator.providers import ApidotRoutes, EvolinkRoutes, OpenAIRoutes, json_response
from simulator.simulation import Simulator


def create_app(config: SimConfig, *, clock: Callable[[], float] | None = None) -> Starlette:
    """A simulator app; its `Simulator` is `app.state.simulator` (started by the lifespan)."""
    sim = Simulator(config, clock=clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sim.start()
        try:
            yield
        finally:
            await sim.aclose()

    async def jwks(request: Request) -> Response:
        return json_response(sim.fal_signer.jwks())

    routes = [
        Route(config.fal_jwks_path, jwks, methods=["GET"]),  # before the mounts it may be under
        *MediaRoutes(sim).routes(),
        Mount("/openai", routes=OpenAIRoutes(sim).routes()),
        Mount("/apidot", routes=ApidotRoutes(sim).routes()),
        Mount("/evolink", routes=EvolinkRoutes(sim).routes()),
        Mount("/replicate", routes=ReplicateRoutes(sim).routes()),
        Mount("/fal", routes=FalRoutes(sim).routes()),
        Mount("/kie", routes=KieRoutes(sim).routes()),
        *(
            Mount(f"/{name}", routes=DescribedRoutes(sim, description).routes())
            for name, description in sim.described.items()
        ),
        *ControlRoutes(sim).routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.simulator = sim
    return app
