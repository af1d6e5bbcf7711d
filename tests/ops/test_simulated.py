"""The environment of a simulated system is settings a receiver and a reconciler start from."""

from __future__ import annotations

from typing import Any

from ops.simulated import SIMULATED_PROVIDERS, simulated_environment
from schemas.settings import Settings


def simulated(**variations: Any) -> dict[str, str]:
    return simulated_environment(
        database_url="sqlite+aiosqlite:///ledger.db",
        sim_url="http://127.0.0.1:9000",
        api_key="sk-sim",
        admin_token="admin",
        callback_secrets=["new", "old"],
        webhook_secret="whsec_c2VjcmV0",
        **variations,
    )


def test_every_provider_points_at_the_simulator() -> None:
    settings = Settings.from_environ(simulated())
    assert list(settings.providers) == list(SIMULATED_PROVIDERS)
    assert {p.name: p.base_url for p in settings.providers.values()} == {
        name: f"http://127.0.0.1:9000/{name}" for name in SIMULATED_PROVIDERS
    }
    assert {p.api_key for p in settings.providers.values()} == {"sk-sim"}
    assert settings.providers["openai"].webhook_secrets == ("whsec_c2VjcmV0",)
    assert settings.callback_secrets == ("new", "old")


def test_variations_reach_each_provider_and_the_service() -> None:
    environ = simulated(
        providers=["apidot"],
        provider={"RATE_LIMIT": "8"},
        settings={"LEASE_SECONDS": "5"},
        public_url="http://127.0.0.1:8123",
        base={"PATH": "/bin"},
    )
    settings = Settings.from_environ(environ)
    assert list(settings.providers) == ["apidot"]
    assert settings.providers["apidot"].rate_limit_per_second == 8.0
    assert settings.lease_seconds == 5.0
    assert settings.public_base_url == "http://127.0.0.1:8123"
    assert environ["PATH"] == "/bin"
