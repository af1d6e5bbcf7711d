"""The admin bearer token, checked in one place for the admin API and the dashboard."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from schemas.settings import Settings


def token_is_valid(settings: Settings, offered: str) -> bool:
    """True when `offered` is the admin token; an empty configured token never authenticates."""
    expected = settings.admin_token
    return bool(expected) and hmac.compare_digest(offered.encode(), expected.encode())


def bearer_is_valid(request: Request) -> bool:
    """True when the request's `Authorization: Bearer …` header carries the admin token."""
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_is_valid(
        request.app.state.settings, offered.strip()
    )
