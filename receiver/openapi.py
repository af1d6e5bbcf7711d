"""The OpenAPI 3.1 description of every HTTP route, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

ERROR = {"$ref": "#/components/schemas/Error"}
TASK = {"$ref": "#/components/schemas/Task"}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _answers(*codes: int, ok: Any = None, ok_code: int = 200) -> dict[str, Any]:
    answers: dict[str, Any] = {str(ok_code): {"description": "success"}}
    if ok is not None:
        answers[str(ok_code)]["content"] = {"application/json": {"schema": ok}}
    for code in codes:
        answers[str(code)] = {
            "description": _REASONS[code],
            "content": {"application/json": {"schema": ERROR}},
        }
    return answers


_REASONS = {
    400: "malformed body",
    401: "not authenticated",
    403: "another task's callback",
    404: "unknown provider, source or task",
    408: "body not received in time",
    409: "conflicts with the ledger (a callback: it breaks a unique key, alone)",
    413: "body too large",
    415: "not JSON",
    422: "invalid parameters",
    503: "storage unavailable or writer saturated; retry after Retry-After",
}


def _query(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "query", "required": False, "schema": {"type": "string"}} for n in names
    ]


def _path(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


# Authenticated means kept: 200 (folded in, or kept as `unrecognized` or `ignored`) and 202
# (kept as `unmatched` or `held`) both carry `{"outcome": ...}`; nothing else is refused
# but authentication, another task's body, and transport.
OUTCOME = {
    "type": "object",
    "properties": {
        "outcome": {
            "type": "string",
            "enum": [
                "applied",
                "confirmed",
                "duplicate",
                "stale",
                "conflict",
                "unrecognized",
                "ignored",
                "unmatched",
                "held",
            ],
        }
    },
    "required": ["outcome"],
}
KEPT = {
    "200": {
        "description": "stored (folded in, or kept raw as unrecognized or ignored)",
        "content": {"application/json": {"schema": OUTCOME}},
    },
    "202": {
        "description": "stored, folded in later (unmatched, or held for the submit answer)",
        "content": {"application/json": {"schema": OUTCOME}},
    },
}
CALLBACK = {
    "post": {
        "summary": "Unsigned provider callback, bound to its task by the URL token",
        "parameters": _path("provider", "token"),
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {**_answers(401, 403, 404, 408, 409, 413, 503), **KEPT},
    }
}
WEBHOOK = {
    "post": {
        "summary": "Standard Webhooks signed event (OpenAI, any Standard Webhooks sender)",
        "parameters": _path("source")
        + [
            {"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
            for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
        ],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {**_answers(401, 404, 408, 409, 413, 503), **KEPT},
    }
}
PATHS: dict[str, Any] = {
    "/callbacks/{provider}/{token}": CALLBACK,
    "/webhooks/{source}": WEBHOOK,
    "/v1/tasks": {
        "post": {
            "summary": "Register a task (submit: true lets taskledger submit it)",
            "security": BEARER,
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/NewTask"}}
                }
            },
            "responses": {
                **_answers(401, 409, 415, 422, 503, ok=TASK, ok_code=201),
                "202": {"description": "registered; submission queued"},
            },
        },
        "get": {
            "summary": "List tasks, newest first, by cursor",
            "security": BEARER,
            "parameters": _query(
                "state",
                "provider",
                "owner",
                "since",
                "until",
                "conflict",
                "recovered",
                "stuck",
                "limit",
                "cursor",
            ),
            "responses": _answers(401, 422, 503),
        },
    },
    "/v1/tasks/{ref}": {
        "get": {
            "summary": "A task and its timeline",
            "security": BEARER,
            "parameters": _path("ref"),
            "responses": _answers(401, 404, 503, ok=TASK),
        },
        "patch": {
            "summary": "Attach the provider's task id",
            "security": BEARER,
            "parameters": _path("ref"),
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["provider_task_id"],
                            "properties": {"provider_task_id": {"type": "string"}},
                        }
                    }
                }
            },
            "responses": _answers(401, 404, 409, 415, 422, 503, ok=TASK),
        },
    },
    "/v1/changes": {
        "get": {
            "summary": "Authoritative changes in seq order (long-poll: wait)",
            "security": BEARER,
            "parameters": _query("after", "limit", "wait"),
            "responses": _answers(401, 422, 503),
        }
    },
    "/v1/audit": {
        "get": {
            "summary": "Per-provider audit summary",
            "security": BEARER,
            "parameters": _query("since", "until"),
            "responses": _answers(401, 422, 503),
        }
    },
    "/v1/export": {
        "get": {
            "summary": "Stream tasks and outcomes as JSON lines or CSV",
            "security": BEARER,
            "parameters": _query("format", "since", "until", "state", "provider"),
            "responses": _answers(401, 422, 503),
        }
    },
    "/healthz": {"get": {"summary": "Alive", "responses": _answers()}},
    "/readyz": {"get": {"summary": "Database reachable and migrated", "responses": _answers(503)}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "responses": _answers()}},
    "/openapi.json": {"get": {"summary": "This description", "responses": _answers()}},
}
COMPONENTS = {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        },
        "NewTask": {
            "type": "object",
            "required": ["provider"],
            "properties": {
                "provider": {"type": "string"},
                "owner": {"type": "string"},
                "model": {"type": "string"},
                "request": {"type": "object"},
                "provider_task_id": {"type": "string"},
                "submit": {"type": "boolean"},
            },
        },
        "Task": {
            "type": "object",
            "properties": {
                "ref": {"type": "string"},
                "provider": {"type": "string"},
                "provider_task_id": {"type": ["string", "null"]},
                "state": {"type": "string"},
                "progress": {"type": "integer"},
                "confirmed": {"type": "boolean"},
                "conflict": {"type": "boolean"},
                "submission": {"type": ["string", "null"]},
                "attention": {"type": ["string", "null"]},
                "callback_url": {"type": "string"},
            },
        },
    },
}


def document(extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskledger",
            "version": "0.1.0",
            "description": "Webhook receiver and reconciliation ledger.",
        },
        "paths": {**PATHS, **(extra_paths or {})},
        "components": COMPONENTS,
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)
