"""The OpenAPI 3.1 description of every HTTP route, served at `/openapi.json`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from receiver import contract
from schemas.states import State
from schemas.store.queries import TASKLESS_OUTCOMES
from schemas.wire import Kind
from schemas.wire.examples import EXAMPLE_TASK_IDS, callback_body, callback_states
from schemas.wire.formats import scheme_of

ERROR = contract.ref(contract.Error)
TASK = contract.ref(contract.Task)
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
    400: "malformed body, or an unknown field (the answer names the allowed ones)",
    401: "not authenticated",
    403: "another task's callback",
    404: "unknown provider, source, task or delivery",
    408: "body not received in time",
    409: "conflicts with the ledger (a callback: it breaks a unique key, alone; a registration:"
    " its Idempotency-Key came before with another body)",
    413: "body too large",
    415: "not JSON, or compressed (a Content-Encoding other than identity)",
    422: "invalid parameters: a value refused (the answer says what it must be: a filter's"
    " words, a number's bounds), or a query parameter the operation does not take or given"
    " twice (the answer names the ones it takes)",
    503: "storage unavailable (and the local spool full or off) or writer saturated; retry"
    " after Retry-After",
}


TEXT: dict[str, Any] = {"type": "string"}
TIME_VALUE = {"type": "string", "format": "date-time"}
FLAG_VALUE = {"type": "string", "enum": [*contract.TRUE_WORDS, *contract.FALSE_WORDS]}
# What each query parameter takes, from the constants its validator reads (any other: text).
# A filter left empty filters nothing, and a flag is read in any case, as its validator says.
QUERY_VALUES: dict[str, dict[str, Any]] = {
    "state": {"type": "string", "enum": [state.value for state in State]},
    "outcome": {"type": "string", "enum": list(TASKLESS_OUTCOMES)},
    "format": {"type": "string", "enum": list(contract.EXPORT_FORMATS)},
    "since": TIME_VALUE,
    "until": TIME_VALUE,
    "conflict": FLAG_VALUE,
    "recovered": FLAG_VALUE,
    "stuck": FLAG_VALUE,
    "limit": {"type": "integer", "minimum": 1, "maximum": contract.MAX_PAGE},
    "after": {"type": "integer", "minimum": 0, "maximum": contract.MAX_SEQ},
    "wait": {"type": "number", "minimum": 0, "maximum": contract.MAX_WAIT_SECONDS},
}


def _query(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "query", "required": False, "schema": QUERY_VALUES.get(n, TEXT)}
        for n in names
    ]


OWNER_FILTER = {
    **_query("owner")[0],
    "description": f"the tasks of this owner only; an owner is {contract.OWNER_RULE}",
}
CURSOR = {
    **_query("cursor")[0],
    "description": "the next_cursor of the previous page of this same list: the same filters"
    " (every parameter but limit), so the same order (stuck or not); another list's, or one"
    " given with other filters, is refused (422)",
}


def _path(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


# Authenticated means kept: 200 (folded in, or kept as `unrecognized` or `ignored`) and 202
# (kept as `unmatched` or `held`, or `spooled` locally while PostgreSQL is unavailable)
# both carry `{"outcome": ...}`; nothing else is refused
# but authentication, another task's body, and transport.
OUTCOME = contract.ref(contract.Outcome)
KEPT = {
    "200": {
        "description": "stored (folded in, or kept raw as unrecognized or ignored)",
        "content": {"application/json": {"schema": OUTCOME}},
    },
    "202": {
        "description": "kept, folded in later (unmatched, held for the submit answer, or"
        " spooled on the receiver's host while PostgreSQL is unavailable)",
        "content": {"application/json": {"schema": OUTCOME}},
    },
}
# Any body that authenticates is kept, whatever it holds: the examples are what each
# provider sends (`schemas.wire.examples`, read back by taskledger's own readers).
ANY_BODY: dict[str, Any] = {"description": "the provider's body, kept as sent"}


# The routes senders call: their query is the provider's (kept, never checked).
CALLBACK_PATHS = frozenset({"/callbacks/{provider}/{token}", "/webhooks/{source}"})
UNDECLARED_QUERY = {
    "description": "a query parameter the operation does not take (the answer names the ones"
    " it takes), or one given twice",
    "content": {"application/json": {"schema": ERROR}},
}


def _callback(providers: list[str], examples: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": "Unsigned provider callback, bound to its task by the URL token",
            "parameters": [_named("provider", providers), *_path("token")],
            "requestBody": _examples(examples),
            "responses": {**_answers(401, 403, 404, 408, 409, 413, 503), **KEPT},
        }
    }


def _webhook(sources: list[str], examples: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": "Standard Webhooks signed event (OpenAI, any Standard Webhooks sender)",
            "parameters": [_named("source", sources)]
            + [
                {"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
                for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
            ],
            "requestBody": _examples(examples),
            "responses": {**_answers(401, 404, 408, 409, 413, 503), **KEPT},
        }
    }


def _named(name: str, values: list[str]) -> dict[str, Any]:
    schema = {"type": "string", "enum": values} if values else {"type": "string"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _examples(examples: dict[str, Any]) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": ANY_BODY}
    if examples:
        media["examples"] = examples
    return {"required": True, "content": {"application/json": media}}


def provider_examples(kinds: Mapping[str, Kind]) -> dict[str, dict[str, Any]]:
    """Each provider's callback bodies (`succeeded`, `failed`) as OpenAPI examples, by
    where they arrive: `webhook` (Standard Webhooks) or `callback` (a task's URL)."""
    found: dict[str, dict[str, Any]] = {"webhook": {}, "callback": {}}
    for name, kind in sorted(kinds.items()):
        route = "webhook" if scheme_of(kind) == "standard-webhooks" else "callback"
        task_id = EXAMPLE_TASK_IDS.get(name, "task_0123456789")
        for state in (State.SUCCEEDED, State.FAILED):
            if state not in callback_states(kind):
                continue
            found[route][f"{name}-{state.value}"] = {
                "summary": f"{name}: a task {state.value}",
                "value": callback_body(kind, task_id, state),
            }
    return found


def _json_body(kind: type, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": contract.ref(kind)}}}


class TasklessDelivery(TypedDict):
    """A delivery kept with no task (`GET /v1/deliveries`); its headers for the admin scope."""

    id: int
    provider: str
    provider_task_id: str
    delivery_key: str
    outcome: str  # one of `TASKLESS_OUTCOMES`, as the schema says
    reason: str | None
    received_at: contract.Time
    last_seen_at: contract.Time
    duplicate_count: int
    auth: str
    headers: dict[str, Any] | None


class TasklessPayload(TasklessDelivery):
    """One of them with its body (`GET /v1/deliveries/{id}`): UTF-8 text, else base64."""

    encoding: Literal["utf-8", "base64"] | None
    body: str | None


def _taskless(kind: type) -> dict[str, Any]:
    """`kind`'s schema, in line (the components stay `receiver.contract`'s own types), its
    outcome one of those a delivery with no task can have."""
    schema = TypeAdapter(kind).json_schema()
    schema["properties"]["outcome"]["enum"] = list(TASKLESS_OUTCOMES)
    return schema


TASKLESS = _taskless(TasklessDelivery)
TASKLESS_PAYLOAD = _taskless(TasklessPayload)
TASKLESS_PAGE = {
    "type": "object",
    "properties": {
        "deliveries": {"type": "array", "items": TASKLESS},
        "next_cursor": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["deliveries", "next_cursor"],
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1 to 200 printable ASCII characters, the caller's own",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
SINCE_REQUIRED = {**_query("since")[0], "required": True}
REQUEUED = contract.ref(contract.Requeued)
ENDPOINT = contract.ref(contract.Endpoint)
KEY = contract.ref(contract.ApiKey)
PATHS: dict[str, Any] = {
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
            "requestBody": _json_body(contract.NewTask),
            "responses": {
                **_answers(400, 401, 408, 409, 413, 415, 422, 503, ok=TASK, ok_code=201),
                "202": {
                    "description": "registered; submission queued",
                    "content": {"application/json": {"schema": TASK}},
                },
            },
        },
        "get": {
            "summary": "List tasks, newest first, by cursor (a key limited to an owner: its)",
            "security": BEARER,
            "parameters": [
                *_query("state", "provider"),
                OWNER_FILTER,
                *_query("since", "until", "conflict", "recovered", "stuck", "limit"),
                CURSOR,
            ],
            "responses": _answers(401, 422, 503, ok=contract.ref(contract.TaskPage)),
        },
    },
    "/v1/tasks/{ref}": {
        "get": {
            "summary": "A task and its timeline",
            "security": BEARER,
            "parameters": _path("ref"),
            "responses": _answers(401, 404, 503, ok=contract.ref(contract.TaskStory)),
        },
        "patch": {
            "summary": "Attach the provider's task id; answers the whole task (write scope)",
            "security": BEARER,
            "parameters": _path("ref"),
            "requestBody": _json_body(contract.AttachTaskId),
            "responses": _answers(400, 401, 404, 408, 409, 413, 415, 422, 503, ok=TASK),
        },
    },
    "/v1/changes": {
        "get": {
            "summary": "Authoritative changes in seq order (long-poll: wait)",
            "security": BEARER,
            "parameters": _query("after", "limit", "wait"),
            "responses": _answers(401, 422, 503, ok=contract.ref(contract.ChangePage)),
        }
    },
    "/v1/audit": {
        "get": {
            "summary": "Per-provider audit summary",
            "security": BEARER,
            "parameters": _query("since", "until"),
            "responses": _answers(401, 422, 503, ok=contract.JSON_OBJECT),
        }
    },
    "/v1/deliveries": {
        "get": {
            "summary": "Deliveries kept with no task, newest first, by cursor (keys limited to an"
            " owner: none; headers for the admin scope)",
            "security": BEARER,
            "parameters": [*_query("provider", "outcome", "since", "until", "limit"), CURSOR],
            "responses": _answers(401, 422, 503, ok=TASKLESS_PAGE),
        }
    },
    "/v1/deliveries/{id}": {
        "get": {
            "summary": "A delivery kept with no task, its headers and raw body (UTF-8 text, else"
            " base64); admin only",
            "security": BEARER,
            "parameters": _path("id"),
            "responses": _answers(401, 404, 503, ok=TASKLESS_PAYLOAD),
        }
    },
    "/v1/export": {
        "get": {
            "summary": "Stream tasks and outcomes as JSON lines or CSV",
            "security": BEARER,
            "parameters": [
                *_query("format", "state", "provider"),
                OWNER_FILTER,
                *_query("since", "until", "conflict", "recovered", "stuck"),
            ],
            "responses": {
                **_answers(401, 422, 503),
                "200": {
                    "description": "one task a line (format=jsonl), or CSV with a header row"
                    " (a text cell a spreadsheet would read as a formula starts with ')",
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
            },
        }
    },
    "/v1/endpoints": {
        "post": {
            "summary": "Add a notification endpoint; its signing secret is shown this once",
            "security": BEARER,
            "requestBody": _json_body(contract.NewEndpoint),
            "responses": _answers(
                400,
                401,
                408,
                413,
                415,
                422,
                503,
                ok=contract.ref(contract.EndpointWithSecret),
                ok_code=201,
            ),
        },
        "get": {
            "summary": "Every notification endpoint, with its dispatches and recent failures",
            "security": BEARER,
            "responses": _answers(401, 503, ok=contract.ref(contract.EndpointList)),
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
            "requestBody": _json_body(contract.EndpointChanges),
            "responses": _answers(400, 401, 404, 408, 413, 415, 422, 503, ok=ENDPOINT),
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
            "requestBody": _json_body(contract.Rotation, required=False),
            "responses": _answers(
                400, 401, 404, 408, 413, 415, 422, 503, ok=contract.ref(contract.EndpointWithSecret)
            ),
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
            "requestBody": _json_body(contract.NewKey),
            "responses": _answers(
                400,
                401,
                408,
                413,
                415,
                422,
                503,
                ok=contract.ref(contract.ApiKeyWithSecret),
                ok_code=201,
            ),
        },
        "get": {
            "summary": "Every API key by its prefix, revoked ones too (admin scope)",
            "security": BEARER,
            "responses": _answers(401, 503, ok=contract.ref(contract.KeyList)),
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
    "/healthz": {
        "get": {"summary": "Alive", "responses": _answers(ok=contract.ref(contract.Alive))}
    },
    "/readyz": {
        "get": {
            "summary": "Database reachable, migrated and taking writes, or the spool taking them",
            "responses": _answers(503, ok=contract.ref(contract.Readiness)),
        }
    },
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
    "schemas": contract.component_schemas(),
}


def document(
    kinds: Mapping[str, Kind], extra_paths: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The whole description: the `/v1` routes, and the callback routes with each
    configured provider's bodies (`kinds`, by provider name) as examples."""
    examples = provider_examples(kinds)
    signed = sorted(n for n, k in kinds.items() if scheme_of(k) == "standard-webhooks")
    by_url = sorted(set(kinds) - set(signed))
    callbacks = {
        "/callbacks/{provider}/{token}": _callback(by_url, examples["callback"]),
        "/webhooks/{source}": _webhook(signed, examples["webhook"]),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskledger",
            "version": "0.1.0",
            "description": "Webhook receiver and reconciliation ledger.",
        },
        "paths": _query_checked(_scoped({**callbacks, **PATHS, **(extra_paths or {})})),
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


def query_names(document: Mapping[str, Any]) -> dict[tuple[str, str], tuple[str, ...]]:
    """By method (upper case) and path template, the query parameters declared by each
    operation whose query is checked: every `/v1/` operation, and any other declaring
    some; never the callbacks' (a provider may add its own parameters to them)."""
    return {
        (method.upper(), path): _declared_query(operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if _checks_query(path, operation)
    }


def _declared_query(operation: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(p["name"] for p in operation.get("parameters", ()) if p.get("in") == "query")


def _checks_query(path: str, operation: Mapping[str, Any]) -> bool:
    if path in CALLBACK_PATHS:
        return False
    return path.startswith("/v1/") or bool(_declared_query(operation))


def _query_checked(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation whose query is checked may answer 422: an undeclared parameter."""
    return {
        path: {
            method: operation | {"responses": {"422": UNDECLARED_QUERY, **operation["responses"]}}
            if _checks_query(path, operation)
            else operation
            for method, operation in item.items()
        }
        for path, item in paths.items()
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)
