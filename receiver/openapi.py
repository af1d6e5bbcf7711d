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
    400: "malformed body, an unknown field, or a filter's unknown value (the answer names the"
    " allowed ones)",
    401: "not authenticated",
    403: "another task's callback",
    404: "unknown provider, source or task",
    408: "body not received in time",
    409: "conflicts with the ledger (a callback: it breaks a unique key, alone; a registration:"
    " its Idempotency-Key came before with another body)",
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


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_NAMES = {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1}
_ENDPOINT_FIELDS: dict[str, Any] = {
    "url": {"type": "string", "description": "https://…, nats://host/subject, amqp://…"},
    "description": {"type": "string"},
    "providers": _NAMES,
    "owners": _NAMES,
    "event_types": _NAMES,
    "include_unconfirmed": {"type": "boolean"},
    "enabled": {"type": "boolean"},
}
NEW_ENDPOINT = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": _ENDPOINT_FIELDS,
}
ENDPOINT_CHANGES = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": _ENDPOINT_FIELDS,
}
ROTATION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"grace_seconds": {"type": "number", "minimum": 0, "default": 86400}},
}
ENDPOINT = {"$ref": "#/components/schemas/Endpoint"}
ENDPOINT_WITH_SECRET = {
    "allOf": [
        ENDPOINT,
        {"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}},
    ]
}
ENDPOINT_LIST = {
    "type": "object",
    "properties": {"endpoints": {"type": "array", "items": ENDPOINT}},
}
KEY_SCOPES = ["read", "write", "admin"]
NEW_KEY = {
    "type": "object",
    "required": ["name", "scope"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "scope": {"type": "string", "enum": KEY_SCOPES},
        "owner": {"type": ["string", "null"], "maxLength": 200},
    },
}
KEY = {"$ref": "#/components/schemas/ApiKey"}
KEY_WITH_SECRET = {
    "allOf": [
        KEY,
        {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}},
    ]
}
KEY_LIST = {"type": "object", "properties": {"keys": {"type": "array", "items": KEY}}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1 to 200 printable ASCII characters, the caller's own",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
SINCE_REQUIRED = {"name": "since", "in": "query", "required": True, "schema": {"type": "string"}}
REQUEUED = {
    "type": "object",
    "required": ["requeued"],
    "properties": {"requeued": {"type": "integer"}},
}
PATHS: dict[str, Any] = {
    "/callbacks/{provider}/{token}": CALLBACK,
    "/webhooks/{source}": WEBHOOK,
    "/v1/tasks": {
        "post": {
            "summary": "Register a task (submit: true lets taskledger submit it; write scope)",
            "description": (
                "With an Idempotency-Key, the first answer is kept (a week at least): the same"
                " key with the same body gets it again, marked Idempotent-Replayed: true; with"
                " another body, 409. A key is the caller's own. A key limited to an owner"
                " registers that owner's tasks only (403 for another)."
            ),
            "security": BEARER,
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/NewTask"}}
                }
            },
            "responses": {
                **_answers(400, 401, 409, 415, 422, 503, ok=TASK, ok_code=201),
                "202": {"description": "registered; submission queued"},
            },
        },
        "get": {
            "summary": "List tasks, newest first, by cursor (a key limited to an owner: its)",
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
            "responses": _answers(400, 401, 422, 503),
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
            "summary": "Attach the provider's task id; answers the whole task (write scope)",
            "security": BEARER,
            "parameters": _path("ref"),
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["provider_task_id"],
                            "additionalProperties": False,
                            "properties": {"provider_task_id": {"type": "string"}},
                        }
                    }
                }
            },
            "responses": _answers(400, 401, 404, 409, 415, 422, 503, ok=TASK),
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
            "responses": _answers(400, 401, 422, 503),
        }
    },
    "/v1/endpoints": {
        "post": {
            "summary": "Add a notification endpoint; its signing secret is shown this once",
            "security": BEARER,
            "requestBody": _json_body(NEW_ENDPOINT),
            "responses": _answers(400, 401, 415, 422, 503, ok=ENDPOINT_WITH_SECRET, ok_code=201),
        },
        "get": {
            "summary": "Every notification endpoint, with its dispatches and recent failures",
            "security": BEARER,
            "responses": _answers(401, 503, ok=ENDPOINT_LIST),
        },
    },
    "/v1/endpoints/{id}": {
        "get": {
            "summary": "An endpoint, with its dispatches by state and its recent failures",
            "security": BEARER,
            "parameters": _path("id"),
            "responses": _answers(401, 404, 503, ok=ENDPOINT),
        },
        "patch": {
            "summary": "Change an endpoint: its URL (checked again), filters, or enable it",
            "security": BEARER,
            "parameters": _path("id"),
            "requestBody": _json_body(ENDPOINT_CHANGES),
            "responses": _answers(400, 401, 404, 415, 422, 503, ok=ENDPOINT),
        },
        "delete": {
            "summary": "Remove an endpoint and its dispatches (the events stay)",
            "security": BEARER,
            "parameters": _path("id"),
            "responses": _answers(401, 404, 503, ok_code=204),
        },
    },
    "/v1/endpoints/{id}/rotate": {
        "post": {
            "summary": "A new signing secret, shown this once; the old one signs for the grace",
            "security": BEARER,
            "parameters": _path("id"),
            "requestBody": _json_body(ROTATION, required=False),
            "responses": _answers(400, 401, 404, 415, 422, 503, ok=ENDPOINT_WITH_SECRET),
        }
    },
    "/v1/endpoints/{id}/recover": {
        "post": {
            "summary": "Send again the endpoint's failed events made since a time",
            "security": BEARER,
            "parameters": [*_path("id"), SINCE_REQUIRED],
            "responses": _answers(401, 404, 422, 503, ok=REQUEUED),
        }
    },
    "/v1/messages/{msg_id}/retry": {
        "post": {
            "summary": "Send an event again, now, to every endpoint it went to",
            "security": BEARER,
            "parameters": _path("msg_id"),
            "responses": _answers(401, 404, 503, ok=REQUEUED),
        }
    },
    "/v1/keys": {
        "post": {
            "summary": "Make an API key (admin scope); the key is shown this once",
            "security": BEARER,
            "requestBody": _json_body(NEW_KEY),
            "responses": _answers(400, 401, 415, 422, 503, ok=KEY_WITH_SECRET, ok_code=201),
        },
        "get": {
            "summary": "Every API key by its prefix, revoked ones too (admin scope)",
            "security": BEARER,
            "responses": _answers(401, 503, ok=KEY_LIST),
        },
    },
    "/v1/keys/{id}": {
        "delete": {
            "summary": "Revoke an API key: at once here, within 30 s in other processes",
            "security": BEARER,
            "parameters": _path("id"),
            "responses": _answers(401, 404, 503, ok=KEY),
        }
    },
    "/healthz": {"get": {"summary": "Alive", "responses": _answers()}},
    "/readyz": {"get": {"summary": "Database reachable and migrated", "responses": _answers(503)}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "responses": _answers()}},
    "/openapi.json": {"get": {"summary": "This description", "responses": _answers()}},
}
COMPONENTS = {
    "securitySchemes": {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "TASKLEDGER_ADMIN_TOKEN, or an API key (tlk_…) of scope read,"
            " write or admin, perhaps limited to one owner's tasks",
        }
    },
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        },
        "NewTask": {
            "type": "object",
            "required": ["provider"],
            "additionalProperties": False,
            "properties": {
                "provider": {"type": "string"},
                "owner": {"type": "string"},
                "model": {"type": "string"},
                "request": {"type": "object"},
                "provider_task_id": {"type": "string"},
                "submit": {"type": "boolean"},
            },
        },
        "ApiKey": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "prefix": {"type": "string"},
                "name": {"type": "string"},
                "scope": {"type": "string", "enum": KEY_SCOPES},
                "owner": {"type": ["string", "null"]},
                "created_at": {"type": "string"},
                "last_used_at": {"type": ["string", "null"]},
                "revoked_at": {"type": ["string", "null"]},
            },
        },
        "Endpoint": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "kind": {"type": "string", "enum": ["http", "nats", "amqp"]},
                **_ENDPOINT_FIELDS,
                "secrets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "prefix": {"type": "string"},
                            "expires_at": {"type": ["string", "null"]},
                        },
                    },
                },
                "disabled_reason": {"type": ["string", "null"]},
                "disabled_at": {"type": ["string", "null"]},
                "failing_since": {"type": ["string", "null"]},
                "last_success_at": {"type": ["string", "null"]},
                "health": {"type": "object"},
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
        "paths": _scoped({**PATHS, **(extra_paths or {})}),
        "components": COMPONENTS,
    }


def _scoped(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation a bearer token opens may answer 403: the key's scope is too narrow."""
    forbidden = {
        "description": "the key's scope does not allow this",
        "content": {"application/json": {"schema": ERROR}},
    }
    return {
        path: {
            method: operation | {"responses": {"403": forbidden, **operation["responses"]}}
            if {"bearer": []} in operation.get("security", [])
            else operation
            for method, operation in item.items()
        }
        for path, item in paths.items()
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)
