"""The app factory and its lifespan."""

from __future__ import annotations

from simulator import SimConfig, Simulator, create_app
from tests.simulator.support import make_config, running


def test_create_app_keeps_its_simulator_in_state() -> None:
    app = create_app(SimConfig())
    assert isinstance(app.state.simulator, Simulator)


async def test_create_app_passes_the_clock_to_the_simulator() -> None:
    app = create_app(SimConfig(), clock=lambda: 42.0)
    assert app.state.simulator.clock() == 42.0


async def test_each_format_lives_under_its_own_prefix() -> None:
    async with running(make_config()) as run:
        answers = [
            await run.client.get("/openai/v1/videos"),
            await run.client.get("/evolink/v1/videos"),
            await run.client.get("/apidot/v1/videos"),
        ]
    assert [answer.status_code for answer in answers] == [200, 404, 404]
