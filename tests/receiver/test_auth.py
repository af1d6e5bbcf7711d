"""The admin bearer token: one check for the admin API and the dashboard."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from receiver.admin import require_admin
from receiver.auth import bearer_is_valid, token_is_valid
from receiver.errors import Unauthenticated
from schemas.settings import Settings
from tests.conftest import FakeClock

TOKEN = "admin-token-" + "x" * 20


def request_with(configured: str, authorization: str | None) -> Request:
    app = Starlette()
    app.state.settings = Settings(admin_token=configured)
    app.state.inbox = SimpleNamespace(clock=FakeClock())  # what the session check reads
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "app": app}
    return Request(scope)


@pytest.mark.parametrize(
    ("authorization", "valid"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer  {TOKEN} ", True),
        (f"Bearer {TOKEN}x", False),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
        (None, False),
    ],
    ids=["bearer", "any-case-and-spaces", "other-token", "other-scheme", "no-scheme", "none"],
)
def test_only_the_admin_token_as_a_bearer_authenticates(
    authorization: str | None, valid: bool
) -> None:
    assert bearer_is_valid(request_with(TOKEN, authorization)) is valid


def test_an_empty_configured_token_refuses_an_empty_offered_one() -> None:
    assert not token_is_valid(Settings(admin_token=""), "")
    assert not bearer_is_valid(request_with("", "Bearer "))


def test_the_admin_api_refuses_everyone_when_no_token_is_configured() -> None:
    with pytest.raises(Unauthenticated):
        require_admin(request_with("", "Bearer "))


def test_the_admin_api_accepts_the_admin_bearer_token() -> None:
    require_admin(request_with(TOKEN, f"Bearer {TOKEN}"))
