"""The Starlette app factory: one server hosting all three providers and the `/_sim/` controls.

Provider base URLs are `{server}/openai`, `{server}/apidot` and `{server}/evolink`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Mount

from simulator.config import SimConfig
from simulator.control import ControlRoutes
from simulator.providers import ApidotRoutes, EvolinkRoutes, OpenAIRoutes
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

    routes = [
        Mount("/openai", routes=OpenAIRoutes(sim).routes()),
        Mount("/apidot", routes=ApidotRoutes(sim).routes()),
        Mount("/evolink", routes=EvolinkRoutes(sim).routes()),
        *ControlRoutes(sim).routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.simulator = sim
    return app
