"""Verification schemes as a definition names them: which definitions load, which settings
each scheme needs before the receiver starts, and what a sender hears when fal's keys
cannot be fetched."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.schemes import callback_schemes
from schemas.definition import load_definition
from schemas.errors import ConfigError
from schemas.settings import Settings
from tests.conftest import FakeClock
from tests.support.servers import free_port
from tests.support.service import ADMIN_TOKEN, CALLBACK_SECRETS, running_service
from tests.support.signers import FAL_USER_ID, fal_body, fal_headers

BASE = """
name = "signer"
[poll]
path = "/t/{task_id}"
[fields]
task_id = "id"
status = "status"
[states]
done = "succeeded"
"""


def _write(tmp_path: Path, callbacks: str) -> Path:
    path = tmp_path / "signer.toml"
    path.write_text(BASE + "[callbacks]\n" + callbacks, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("callbacks", "verify", "jwks_url"),
    [
        ("verify = 'ed25519-jwks'\n", "ed25519-jwks", ""),
        (
            "verify = 'ed25519-jwks'\njwks_url = 'https://rest.fal.ai/.well-known/jwks.json'\n",
            "ed25519-jwks",
            "https://rest.fal.ai/.well-known/jwks.json",
        ),
        ("verify = 'hmac-fields'\n", "hmac-fields", ""),
    ],
    ids=["ed25519-jwks", "ed25519-jwks-with-url", "hmac-fields"],
)
def test_definition_may_name_a_signed_token_scheme(
    tmp_path: Path, callbacks: str, verify: str, jwks_url: str
) -> None:
    definition = load_definition(_write(tmp_path, callbacks))
    assert definition.verify == verify
    assert definition.jwks_url == jwks_url
    assert definition.signs_callbacks is False  # their callbacks come to the token route


@pytest.mark.parametrize(
    ("callbacks", "named"),
    [
        ("verify = 'hmac-fields'\njwks_url = 'https://k.example/jwks'\n", "jwks_url"),
        ("jwks_url = 'https://k.example/jwks'\n", "jwks_url"),
        ("verify = 'ed25519-jwks'\njwks_url = 'ftp://k.example/jwks'\n", "jwks_url"),
        ("verify = 'ed25519-jwks'\njwks_url = ''\n", "jwks_url"),
        ("verify = 'rsa-magic'\n", "verify"),
    ],
    ids=["jwks-url-for-hmac", "jwks-url-for-token", "jwks-url-not-http", "jwks-url-empty", "bad"],
)
def test_scheme_key_out_of_place_is_refused_naming_it(
    tmp_path: Path, callbacks: str, named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_definition(_write(tmp_path, callbacks))
    assert str(caught.value).startswith("signer.toml: ")
    assert named in str(caught.value)


def _environ(tmp_path: Path, callbacks: str, **extra: str) -> dict[str, str]:
    _write(tmp_path, callbacks)
    return {
        "TASKLEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "TASKLEDGER_CALLBACK_SECRETS": ",".join(CALLBACK_SECRETS),
        "TASKLEDGER_PROVIDERS_DIR": str(tmp_path),
        "TASKLEDGER_PROVIDERS": "signer",
        **{f"TASKLEDGER_PROVIDER_SIGNER_{name}": value for name, value in extra.items()},
    }


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"JWKS_URL": "https://k.example/jwks"}, "TASKLEDGER_PROVIDER_SIGNER_WEBHOOK_USER_ID"),
        ({"WEBHOOK_USER_ID": "user-1"}, "TASKLEDGER_PROVIDER_SIGNER_JWKS_URL"),
    ],
    ids=["no-user-id", "no-jwks-url"],
)
def test_ed25519_provider_without_its_settings_stops_the_receiver_naming_them(
    tmp_path: Path, clock: FakeClock, extra: dict[str, str], named: str
) -> None:
    settings = Settings.from_environ(_environ(tmp_path, "verify = 'ed25519-jwks'\n", **extra))
    with pytest.raises(ConfigError, match=named):
        callback_schemes(settings, clock)


def test_jwks_url_setting_overrides_the_definition(tmp_path: Path) -> None:
    callbacks = "verify = 'ed25519-jwks'\njwks_url = 'https://rest.alpha.fal.ai/jwks'\n"
    settings = Settings.from_environ(_environ(tmp_path, callbacks))
    assert settings.providers["signer"].jwks_url == "https://rest.alpha.fal.ai/jwks"
    settings = Settings.from_environ(
        _environ(tmp_path, callbacks, JWKS_URL="https://rest.fal.ai/jwks")
    )
    assert settings.providers["signer"].jwks_url == "https://rest.fal.ai/jwks"


async def test_unreachable_key_set_is_answered_503_and_nothing_stored(
    database_url: str, clock: FakeClock, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/jwks.json"  # nothing listens there
    environ = _environ(
        tmp_path, "verify = 'ed25519-jwks'\n", JWKS_URL=nowhere, WEBHOOK_USER_ID=FAL_USER_ID
    )
    settings = Settings.from_environ({**environ, "TASKLEDGER_DATABASE_URL": database_url})
    async with running_service(settings, clock) as service:
        task = await service.register("signer", provider_task_id="req-1")
        body = fal_body("req-1")
        headers = fal_headers(body, Ed25519PrivateKey.generate(), int(clock().timestamp()))
        response = await service.http.post(
            urlsplit(task["callback_url"]).path, content=body, headers=headers
        )
        assert response.status_code == 503, response.text
        assert orjson.loads(response.content)["error"] == "keys_unavailable"
        assert response.headers["retry-after"]
        assert (await service.task(task["ref"]))["timeline"]["deliveries"] == []
