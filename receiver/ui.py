"""The read-only operator dashboard at `/ui`: its page, static files and session cookie.

A browser cannot send a bearer token on navigation, so `POST /ui/login` trades the admin
token or an API key (any scope reads) for a signed, HttpOnly, SameSite=Strict session cookie
that `/ui` and the `/v1` reads accept, with the key's scope and owner (`receiver.auth`).
A sign-in or sign-out a browser says came from another site is refused (login CSRF).
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from receiver import contract
from receiver.auth import (
    SESSION_COOKIE,
    SESSION_MAX_AGE_SECONDS,
    authenticate,
    session_signer,
    token_principal,
)
from receiver.bodies import FORM_MEDIA_TYPE, read_form
from receiver.errors import NotFound, Unauthenticated
from schemas.settings import Settings

LOGIN_BODY_LIMIT_BYTES = 4096
# What `Sec-Fetch-Site` says of a form this service's own page sent, or a typed-in request.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": 80, "https": 443}
CROSS_SITE_MESSAGE = "Refused: that form was sent from another site. Sign in on this page."
STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
}
# Served before sign-in: it keeps a deep link (`#task=`) across the sign-in form.
PUBLIC_STATIC_FILES = frozenset({"login.js"})

LOGIN_STYLE = (
    "body{font:15px system-ui,sans-serif;max-width:22rem;margin:4rem auto;color:#1f2933}"
    "input,button{font:inherit;padding:.4rem;margin:.2rem 0;width:100%;box-sizing:border-box}"
    ".error{color:#b42318}"
)
LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>taskledger: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<script src="/ui/static/login.js" defer></script>
<style>{style}</style></head>
<body><h1>taskledger</h1>{message}
<form method="post" action="/ui/login">
<label for="token">Admin token or API key</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form></body></html>
"""


def _csp(style_source: str, media_source: str = "'self'") -> str:
    """The page's policy; archived outputs play from `media_source` (`/v1/.../artifacts`)."""
    return (
        "default-src 'none'; script-src 'self'; connect-src 'self';"
        f" img-src {media_source} data:; media-src {media_source};"
        f" style-src {style_source}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


_LOGIN_STYLE_HASH = base64.b64encode(hashlib.sha256(LOGIN_STYLE.encode()).digest()).decode()
PAGE_HEADERS = {
    "Content-Security-Policy": _csp("'self'"),
    "X-Content-Type-Options": "nosniff",
    # Not `no-referrer`: with it a browser sends `Origin: null` with the page's own forms.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
LOGIN_HEADERS = {**PAGE_HEADERS, "Content-Security-Policy": _csp(f"'sha256-{_LOGIN_STYLE_HASH}'")}
# An archive that redirects to presigned URLs serves its files from the bucket's HTTPS host.
PRESIGNED_PAGE_HEADERS = {
    **PAGE_HEADERS,
    "Content-Security-Policy": _csp("'self'", "'self' https:"),
}


_HTML_401 = {"description": "not signed in: a sign-in form", "content": {"text/html": {}}}
_HTML_403 = {
    "description": "the browser says the form came from another site: a sign-in form",
    "content": {"text/html": {}},
}


def _error(description: str) -> dict[str, Any]:
    """A refusal's answer, in the API's error shape."""
    schema = contract.ref(contract.Error)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OPENAPI_PATHS = {
    "/ui": {
        "get": {
            "summary": "The operator dashboard (a bearer token or a session cookie)",
            "responses": {"200": {"description": "the page"}, "401": _HTML_401},
        }
    },
    "/ui/login": {
        "post": {
            "summary": "Trade the admin token or an API key (form field `token`) for a 12 h"
            " session cookie",
            "responses": {
                "303": {"description": "signed in: go to /ui"},
                "401": _HTML_401,
                "403": _HTML_403,
                "408": _error("the form not received in time"),
                "413": _error("the form too large"),
                "422": _error(f"not a {FORM_MEDIA_TYPE} form"),
            },
        }
    },
    "/ui/logout": {
        "post": {
            "summary": "End the session",
            "responses": {"303": {"description": "signed out: go to /ui"}, "403": _HTML_403},
        }
    },
    "/ui/static/{name}": {
        "get": {
            "summary": "The dashboard's script and style sheet",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "the file"},
                "401": {"description": "not signed in"},
                "404": {"description": "no such file"},
            },
        }
    },
}


def routes() -> list[Route]:
    return [
        Route("/ui", show_dashboard, methods=["GET"]),
        Route("/ui/login", log_in, methods=["POST"]),
        Route("/ui/logout", log_out, methods=["POST"]),
        Route("/ui/static/{name}", serve_static, methods=["GET"]),
    ]


async def show_dashboard(request: Request) -> Response:
    if await authenticate(request) is None:
        return login_page(None)
    settings: Settings = request.app.state.settings
    headers = PRESIGNED_PAGE_HEADERS if settings.archive.presign else PAGE_HEADERS
    return FileResponse(STATIC_DIR / "ui.html", media_type="text/html", headers=headers)


async def serve_static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in PUBLIC_STATIC_FILES and await authenticate(request) is None:
        raise Unauthenticated("sign in at /ui first")
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=PAGE_HEADERS)


async def log_in(request: Request) -> Response:
    """Trade the admin token or an API key (form field `token`) for a session cookie naming
    it, then go to `/ui`."""
    if sent_from_elsewhere(request):
        return login_page(CROSS_SITE_MESSAGE, status_code=403)
    offered = await _form_token(request)
    signer = session_signer(request)
    principal = await token_principal(request, offered) if offered else None
    if signer is None or principal is None:
        return login_page("That is neither the admin token nor a valid API key.")
    response = RedirectResponse("/ui", status_code=303, headers=PAGE_HEADERS)
    response.set_cookie(
        SESSION_COOKIE,
        signer.sign(principal.subject).decode(),
        max_age=SESSION_MAX_AGE_SECONDS,
        path="/",
        secure=_is_https(request),
        httponly=True,
        samesite="strict",
    )
    return response


async def log_out(request: Request) -> Response:
    if sent_from_elsewhere(request):
        return login_page(CROSS_SITE_MESSAGE, status_code=403)
    response = RedirectResponse("/ui", status_code=303, headers=PAGE_HEADERS)
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=_is_https(request), httponly=True, samesite="strict"
    )
    return response


def login_page(message: str | None, status_code: int = 401) -> HTMLResponse:
    """The sign-in page, `message` its error: a form that posts the token to `/ui/login`;
    `/ui`'s 401 answer, and a refused sign-in's."""
    shown = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    body = LOGIN_PAGE.format(style=LOGIN_STYLE, message=shown)
    return HTMLResponse(body, status_code=status_code, headers=LOGIN_HEADERS)


def sent_from_elsewhere(request: Request) -> bool:
    """Whether the browser says the request came from another site: a `Sec-Fetch-Site` other
    than same-origin or none, or an `Origin` that is not this service's. A client that sends
    neither header (curl) is taken at its word."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in OWN_FETCH_SITES:
        return True
    origin = request.headers.get("origin")
    return origin is not None and _origin_of(origin) not in _own_origins(request)


def _own_origins(request: Request) -> set[tuple[str, str, int]]:
    """The request's own scheme and host, and `TASKLEDGER_PUBLIC_BASE_URL`'s (behind a proxy
    the two differ)."""
    settings: Settings = request.app.state.settings
    found = {
        _origin_of(f"{request.url.scheme}://{request.url.netloc}"),
        _origin_of(settings.public_base_url),
    }
    return {origin for origin in found if origin is not None}


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the port filled in; None for anything else
    (`Origin: null` too)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


async def _form_token(request: Request) -> str:
    fields = await read_form(request, LOGIN_BODY_LIMIT_BYTES, "login form")
    return fields.get("token", [""])[0].strip()


def _is_https(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    return request.url.scheme == "https" or settings.public_base_url.startswith("https://")
