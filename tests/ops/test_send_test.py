"""`taskledger send-test PROVIDER REF STATUS`: a provider's callback, signed or tokened as the
provider does it, against a mock admin API and end to end against a running service."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import structlog
from standardwebhooks import Webhook

from ops.cli import main
from ops.envfile import webhook_secret
from schemas.settings import ProviderSettings, builtin_definitions
from schemas.states import State
from schemas.wire import WireFormat, normalize_callback
from tests.conftest import FakeClock
from tests.support.senders import WEBHOOK_SECRET
from tests.support.service import ADMIN_TOKEN, Service, running_service, settings_for

URL = "http://ledger.test"
CONNECTION = ["--url", URL, "--token", ADMIN_TOKEN]
TOKEN_URL = f"{URL}/callbacks/apidot/tok-secret-123"
REPLICATE_SECRET = webhook_secret()
KIE_KEY = "kie-hmac-key-for-send-test"
PROVIDERS = "openai,apidot,vidgo,evolink,aivideoapi,replicate,fal,kie"


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `.env` of the repository; the providers and secrets a service would have."""
    monkeypatch.chdir(tmp_path)
    for name in ("TASKLEDGER_ADMIN_TOKEN", "TASKLEDGER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TASKLEDGER_PROVIDERS", PROVIDERS)
    monkeypatch.setenv("TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS", WEBHOOK_SECRET)
    monkeypatch.setenv("TASKLEDGER_PROVIDER_REPLICATE_WEBHOOK_SECRETS", REPLICATE_SECRET)
    monkeypatch.setenv("TASKLEDGER_PROVIDER_KIE_WEBHOOK_SECRETS", KIE_KEY)


class Provider:
    """A mock admin API that knows one task, and the callback URL the task was given."""

    def __init__(self, task: dict[str, Any], answer: int = 200) -> None:
        self.task = task
        self.answer = answer
        self.callbacks: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == f"/v1/tasks/{self.task['ref']}":
            return httpx.Response(200, json=self.task)
        if request.method == "GET":
            return httpx.Response(404, json={"message": "no such task"})
        self.callbacks.append(request)
        return httpx.Response(self.answer, json={"outcome": "applied"})

    def run(self, *argv: str) -> int:
        return main(["send-test", *argv, *CONNECTION], transport=httpx.MockTransport(self))

    @property
    def sent(self) -> httpx.Request:
        (request,) = self.callbacks
        return request


def task_of(provider: str, **fields: Any) -> dict[str, Any]:
    signed = provider in ("openai", "replicate")
    return {
        "ref": "tl_0001",
        "provider": provider,
        "provider_task_id": "task-0042",
        "state": "running",
        "confirmed": True,
        "callback_url": f"{URL}/webhooks/{provider}"
        if signed
        else f"{URL}/callbacks/{provider}/tok-secret-123",
        **fields,
    }


def test_an_openai_callback_is_a_signed_thin_event_without_the_admin_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    provider = Provider(task_of("openai"))
    assert provider.run("openai", "tl_0001", "succeeded") == 0
    sent = provider.sent
    assert str(sent.url) == f"{URL}/webhooks/openai"
    assert "authorization" not in sent.headers
    payload = Webhook(WEBHOOK_SECRET).verify(sent.content, dict(sent.headers))
    assert payload["type"] == "video.completed"
    assert payload["data"] == {"id": "task-0042"}
    assert "signed (Standard Webhooks)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "secret", ["rawsecret_0123456789abcdef", "abcdEFGH12345678abcdEFGH12345678"]
)
def test_an_unprefixed_openai_secret_signs_as_openai_s_sdk_reads_it(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    """OpenAI's SDK takes a secret without `whsec_` as its own bytes, and so does the
    receiver: send-test signs with that key (base64 or not), which the SDK then verifies."""
    monkeypatch.setenv("TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS", secret)
    provider = Provider(task_of("openai"))
    assert provider.run("openai", "tl_0001", "succeeded") == 0
    sent = provider.sent
    sdk = openai.OpenAI(api_key="sk-test", webhook_secret=secret)
    sdk.webhooks.verify_signature(sent.content, dict(sent.headers))


def test_a_replicate_callback_is_the_prediction_signed_with_its_own_secret() -> None:
    provider = Provider(task_of("replicate"))
    assert provider.run("replicate", "tl_0001", "cancelled") == 0
    body = Webhook(REPLICATE_SECRET).verify(provider.sent.content, dict(provider.sent.headers))
    assert (body["id"], body["status"]) == ("task-0042", "canceled")


def test_a_gateway_callback_goes_to_the_token_url_unsigned_and_the_token_is_not_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    provider = Provider(task_of("apidot"))
    assert provider.run("apidot", "tl_0001", "failed") == 0
    sent = provider.sent
    assert str(sent.url) == TOKEN_URL
    assert not any(name.startswith(("webhook-", "x-webhook")) for name in sent.headers)
    observation = normalize_callback(WireFormat.APIDOT, json.loads(sent.content))
    assert (observation.provider_task_id, observation.state) == ("task-0042", State.FAILED)
    out = capsys.readouterr().out
    assert "/callbacks/apidot/<token>" in out
    assert "tok-secret-123" not in out


def test_a_kie_callback_carries_its_hmac_of_task_id_and_time() -> None:
    provider = Provider(task_of("kie"))
    assert provider.run("kie", "tl_0001", "succeeded") == 0
    headers = provider.sent.headers
    stamp = headers["x-webhook-timestamp"]
    digest = hmac.new(KIE_KEY.encode(), f"task-0042.{stamp}".encode(), hashlib.sha256).digest()
    assert headers["x-webhook-signature"] == base64.b64encode(digest).decode()
    assert abs(int(stamp) - datetime.now(UTC).timestamp()) < 60


def test_a_kie_callback_without_a_key_carries_the_token_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASKLEDGER_PROVIDER_KIE_WEBHOOK_SECRETS")
    provider = Provider(task_of("kie"))
    assert provider.run("kie", "tl_0001", "succeeded") == 0
    assert "x-webhook-signature" not in provider.sent.headers


def test_fal_is_refused_because_only_fal_holds_its_signing_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    provider = Provider(task_of("fal"))
    assert provider.run("fal", "tl_0001", "succeeded") == 1
    err = capsys.readouterr().err
    assert provider.callbacks == []
    assert "Ed25519" in err
    assert "taskledger does not hold" in err
    assert "Nothing was sent" in err


def test_a_dry_run_prints_the_request_and_sends_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    provider = Provider(task_of("fal"))
    assert provider.run("fal", "tl_0001", "failed", "--dry-run") == 0
    out = capsys.readouterr().out
    assert provider.callbacks == []
    assert out.startswith(f"POST {URL}/callbacks/fal/<token>\n")
    body = json.loads(out.split("\n\n", 1)[1])
    assert (body["request_id"], body["status"]) == ("task-0042", "ERROR")


@pytest.mark.parametrize(
    ("task", "argv", "message"),
    [
        pytest.param(
            task_of("apidot", provider_task_id=None),
            ["apidot", "tl_0001", "succeeded"],
            "has no provider task id yet: pass --task-id",
            id="no-task-id",
        ),
        pytest.param(
            task_of("apidot"),
            ["evolink", "tl_0001", "succeeded"],
            "task tl_0001 is apidot's, not evolink's",
            id="another-provider",
        ),
        pytest.param(
            task_of("openai"),
            ["openai", "tl_0001", "cancelled"],
            "openai sends no cancelled callback (only: succeeded, failed)",
            id="state-not-sent",
        ),
        pytest.param(
            task_of("apidot"),
            ["apidot", "tl_0404", "succeeded"],
            "no task has the ref tl_0404",
            id="unknown-task",
        ),
    ],
)
def test_what_cannot_be_sent_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], task: dict[str, Any], argv: list[str], message: str
) -> None:
    provider = Provider(task)
    assert provider.run(*argv) == 1
    err = capsys.readouterr().err
    assert provider.callbacks == []
    assert err.count("\n") == 1
    assert message in err


def test_a_signed_kind_without_its_secret_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS")
    provider = Provider(task_of("openai"))
    assert provider.run("openai", "tl_0001", "succeeded") == 1
    assert "TASKLEDGER_PROVIDER_OPENAI_WEBHOOK_SECRETS is not set" in capsys.readouterr().err
    assert provider.callbacks == []


def test_a_refused_callback_exits_1_with_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    provider = Provider(task_of("apidot"), answer=401)
    assert provider.run("apidot", "tl_0001", "succeeded") == 1
    captured = capsys.readouterr()
    assert "answer  401" in captured.out
    assert "the service refused the callback (401)" in captured.err


def test_an_unknown_status_word_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["send-test", "apidot", "tl_0001", "finished", *CONNECTION])
    assert exited.value.code == 2
    assert "invalid choice: 'finished'" in capsys.readouterr().err


# -- end to end: a running service, its task ends in the state sent ------------------------


@pytest.fixture
async def service(database_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    definitions = builtin_definitions()
    settings = settings_for(database_url)
    providers = {
        **settings.providers,
        "aivideoapi": ProviderSettings("aivideoapi", WireFormat.AIVIDEOAPI),
        "replicate": ProviderSettings(
            "replicate", definitions["replicate"], webhook_secrets=(REPLICATE_SECRET,)
        ),
        "kie": ProviderSettings("kie", definitions["kie"], webhook_secrets=(KIE_KEY,)),
    }
    with structlog.testing.capture_logs():
        async with running_service(replace(settings, providers=providers), clock) as running:
            yield running


@pytest.mark.parametrize(
    ("provider", "status"),
    [
        ("openai", "succeeded"),
        ("openai", "failed"),
        ("apidot", "succeeded"),
        ("vidgo", "failed"),
        ("evolink", "cancelled"),
        ("aivideoapi", "succeeded"),
        ("replicate", "succeeded"),
        ("replicate", "running"),
        ("kie", "succeeded"),
    ],
)
async def test_the_task_ends_in_the_state_sent(
    service: Service, capsys: pytest.CaptureFixture[str], provider: str, status: str
) -> None:
    task = await service.register(provider, provider_task_id=f"{provider}-task-1")
    argv = [provider, task["ref"], status, "--url", service.base_url, "--token", ADMIN_TOKEN]
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["send-test", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    after = await service.task(task["ref"])
    assert after["state"] == status
    assert f"task    {status}" in out
    (delivery,) = after["timeline"]["deliveries"]
    assert delivery["outcome"] == "applied"
    assert delivery["auth"] == ("signature" if provider in ("openai", "replicate") else "token")


@pytest.mark.parametrize("url", ["http://[::1", "ftp://ledger.test/x", "http://"])
def test_a_callback_url_that_cannot_be_sent_to_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    provider = Provider(task_of("apidot", callback_url=url))
    assert provider.run("apidot", "tl_0001", "succeeded") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "a callback URL that is no http(s) URL: check its TASKLEDGER_PUBLIC_BASE_URL" in err
    assert provider.callbacks == []
