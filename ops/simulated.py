"""The environment of a simulated system: the `TASKLEDGER_*` variables that point a receiver
and a reconciler at the simulator, one builder for the demo, the tests and the benchmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from schemas.settings import PREFIX

SIMULATED_PROVIDERS = ("openai", "apidot", "evolink")


def simulated_environment(
    *,
    database_url: str,
    sim_url: str,
    api_key: str,
    admin_token: str,
    callback_secrets: Sequence[str],
    webhook_secret: str,
    public_url: str | None = None,
    providers: Sequence[str] = SIMULATED_PROVIDERS,
    provider: Mapping[str, str] | None = None,
    settings: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`base` (e.g. `os.environ`) plus the settings of a service whose `providers` are the
    simulator's at `sim_url`. `provider` holds more variables for each provider and
    `settings` more for the service, both named without their prefix (`RATE_LIMIT`,
    `LOG_LEVEL`)."""
    env = {
        **(base or {}),
        PREFIX + "DATABASE_URL": database_url,
        PREFIX + "ADMIN_TOKEN": admin_token,
        PREFIX + "CALLBACK_SECRETS": ",".join(callback_secrets),
        PREFIX + "PROVIDERS": ",".join(providers),
        PREFIX + "PROVIDER_OPENAI_WEBHOOK_SECRETS": webhook_secret,
        # The simulator's OpenAI is a compatible endpoint: it outlives OpenAI's own sunset.
        PREFIX + "PROVIDER_OPENAI_SUNSET": "none",
        **{PREFIX + name: value for name, value in (settings or {}).items()},
    }
    if public_url is not None:
        env[PREFIX + "PUBLIC_BASE_URL"] = public_url
    for name in providers:
        env |= _provider(name, f"{sim_url}/{name}", api_key, provider or {})
    return env


def _provider(name: str, base_url: str, api_key: str, more: Mapping[str, str]) -> dict[str, str]:
    key = f"{PREFIX}PROVIDER_{name.upper()}_"
    values = {"BASE_URL": base_url, "API_KEY": api_key, **more}
    return {key + field: value for field, value in values.items()}
