"""The `/v1` contract as types: request models that validate what writes send, answer types
that the routes' shaping functions return (mypy holds them to it), and the OpenAPI
components generated from both, so the description cannot drift from the code.

Requests are strict pydantic models (JSON's own types: `"1"` is no number, `1` no boolean)
that refuse unknown fields. Answers are `TypedDict`s: building them costs nothing at run
time, and the schemathesis test checks every answer against the description generated here.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, NotRequired, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from receiver.errors import MalformedBody, Unprocessable
from schemas.tables import LABEL_MAX_CHARS

URL_MAX_CHARS = 2_048
FILTER_MAX_ITEMS = 100
MAX_GRACE_SECONDS = 30 * 86_400
DEFAULT_GRACE_SECONDS = 86_400
NO_NUL = r"^[^\x00]*$"  # PostgreSQL's text holds no NUL, so no field does

Label = Annotated[str, Field(max_length=LABEL_MAX_CHARS, pattern=NO_NUL)]
# An owner, wherever one is accepted (a task's, a key's, a filter's), is one rule: at most
# `LABEL_MAX_CHARS` characters, no NUL, not blank, stored and compared without the spaces
# around it. A padded owner that kept its spaces would be another owner than the same name
# trimmed: a key for " team-a " would read the tasks of another owner than "team-a".
OWNER_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
OWNER_RULE = (
    f"a string of at most {LABEL_MAX_CHARS} characters, no NUL, not empty nor only spaces;"
    " the spaces around it are trimmed"
)


def trimmed_owner(raw: str) -> str:
    """`raw` as the owner it names: without the spaces around it; a ValueError when it is
    blank or holds a NUL (checked here too for owners that no model validates)."""
    owner = raw.strip()
    if not owner or "\x00" in owner or len(owner) > LABEL_MAX_CHARS:
        raise ValueError(f"owner must be {OWNER_RULE}")
    return owner


Owner = Annotated[
    str,
    Field(min_length=1, max_length=LABEL_MAX_CHARS, pattern=OWNER_PATTERN, description=OWNER_RULE),
    AfterValidator(trimmed_owner),
]
Owners = Annotated[list[Owner], Field(min_length=1, max_length=FILTER_MAX_ITEMS)]
Name = Annotated[str, Field(min_length=1, max_length=LABEL_MAX_CHARS, pattern=NO_NUL)]
Names = Annotated[list[Name], Field(min_length=1, max_length=FILTER_MAX_ITEMS)]
Scope = Literal["read", "write", "admin"]
Time = Annotated[str, Field(description="ISO 8601, with its offset")]

# Query parameters: what the list routes take, read by their validators (`receiver.queries`)
# and by the description (`receiver.openapi`) alike.
MAX_PAGE = 500
MAX_SEQ = 2**62
MAX_WAIT_SECONDS = 30.0
EXPORT_FORMATS = ("jsonl", "csv")
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


# How deep a task's `request` may nest: the ledger writes it as JSON, whose encoder stops at
# 254 levels (a deeper one would fail the write, not the request); no real one comes near.
REQUEST_MAX_DEPTH = 64


def _shallow(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """`value` if it nests at most `REQUEST_MAX_DEPTH` levels (without recursion)."""
    level: list[Any] = [value]
    for _ in range(REQUEST_MAX_DEPTH):
        level = [
            inner
            for item in level
            for inner in (item.values() if isinstance(item, dict) else item)
            if isinstance(inner, dict | list)
        ]
        if not level:
            return value
    raise ValueError(f"nested more than {REQUEST_MAX_DEPTH} levels deep")


Request = Annotated[dict[str, Any], AfterValidator(_shallow)]
LABEL = f"a string of at most {LABEL_MAX_CHARS} characters, no NUL"
FLAG = "true or false"
FILTER = (
    f"null (everything) or a list of 1 to {FILTER_MAX_ITEMS} non-empty strings of at most"
    f" {LABEL_MAX_CHARS} characters"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    # What each field must be, as a refusal says it ("owner must be …").
    MUST: ClassVar[dict[str, str]] = {}


class NewTask(_Body):
    """`POST /v1/tasks`: a task to register, or to submit (`submit: true`)."""

    provider: Name
    owner: Owner | None = None
    model: Label | None = None
    request: Request | None = Field(None, description="what the provider is asked")
    provider_task_id: Label | None = None
    submit: bool = Field(False, description="taskledger submits it (the provider's base URL)")

    MUST: ClassVar[dict[str, str]] = {
        "provider": "the name of a configured provider",
        "owner": OWNER_RULE + " (leave it out for a task of no owner)",
        "model": LABEL,
        "request": f"a JSON object nested at most {REQUEST_MAX_DEPTH} levels deep",
        "provider_task_id": LABEL,
        "submit": FLAG,
    }


class AttachTaskId(_Body):
    """`PATCH /v1/tasks/{ref}`: the provider's task id, learnt from its submit answer."""

    provider_task_id: Name

    MUST: ClassVar[dict[str, str]] = {
        "provider_task_id": f"a non-empty string of at most {LABEL_MAX_CHARS} characters"
    }


class NewKey(_Body):
    """`POST /v1/keys`: what the key is for, its scope, perhaps one owner it is limited to."""

    name: Name
    scope: Scope
    owner: Owner | None = Field(
        None, description=f"read or write keys only; left out, every owner. {OWNER_RULE}"
    )

    MUST: ClassVar[dict[str, str]] = {
        "name": "what the key is for: " + LABEL,
        "scope": "one of: read, write, admin",
        "owner": OWNER_RULE + " (leave it out for a key of every owner)",
    }


class _EndpointFields(_Body):
    url: Annotated[str, Field(min_length=1, max_length=URL_MAX_CHARS)] | None = Field(
        None, description="https://…, nats://host/subject, amqp://host/exchange"
    )
    description: Label | None = None
    providers: Names | None = Field(None, description="null: every provider")
    owners: Owners | None = Field(None, description=f"null: every owner; each owner {OWNER_RULE}")
    event_types: Names | None = Field(None, description="null: every event type")
    include_unconfirmed: bool | None = None
    enabled: bool | None = None

    MUST: ClassVar[dict[str, str]] = {
        "url": f"a string of 1 to {URL_MAX_CHARS} characters",
        "description": LABEL,
        "providers": FILTER,
        "owners": FILTER + "; each owner not only spaces (the spaces around it are trimmed)",
        "event_types": FILTER,
        "include_unconfirmed": FLAG,
        "enabled": FLAG,
    }


class NewEndpoint(_EndpointFields):
    """`POST /v1/endpoints`: where to send events, and which."""

    url: Annotated[str, Field(min_length=1, max_length=URL_MAX_CHARS)] = Field(
        description="https://…, nats://host/subject, amqp://host/exchange"
    )


class EndpointChanges(_EndpointFields):
    """`PATCH /v1/endpoints/{id}`: the fields to change, at least one."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    @model_validator(mode="after")
    def _changes_something(self) -> EndpointChanges:
        if not self.model_fields_set:
            raise ValueError(f"name at least one field to change: {', '.join(self.MUST)}")
        return self


class Rotation(_Body):
    """`POST /v1/endpoints/{id}/rotate`: how long the old secret keeps signing."""

    grace_seconds: Annotated[float, Field(ge=0, le=MAX_GRACE_SECONDS)] = DEFAULT_GRACE_SECONDS

    MUST: ClassVar[dict[str, str]] = {"grace_seconds": f"a number from 0 to {MAX_GRACE_SECONDS}"}


# -- answers -------------------------------------------------------------------------------


class Error(TypedDict):
    error: str
    message: str


class Outcome(TypedDict):
    """A kept callback: what the ledger made of it."""

    outcome: Literal[
        "applied",
        "confirmed",
        "duplicate",
        "stale",
        "conflict",
        "unrecognized",
        "ignored",
        "unmatched",
        "held",
        "spooled",
    ]


class Task(TypedDict):
    ref: str
    provider: str
    provider_task_id: str | None
    owner: str
    model: str
    request: dict[str, Any] | None
    state: str
    progress: int
    result: dict[str, Any] | None
    state_source: str
    confirmed: bool
    conflict: bool
    recovered: bool
    version: int
    created_at: Time
    updated_at: Time
    last_event_at: Time | None
    terminal_at: Time | None
    next_poll_at: Time | None
    poll_attempts: int
    submission: str | None
    attention: str | None
    callback_url: NotRequired[str]


class TaskStory(Task):
    """A task with its timeline: evidence, transitions, outputs and the events it sent. Of
    its deliveries, polls and transitions the newest 500 of each are shown; `omitted` counts
    the older ones left out, by kind."""

    timeline: dict[str, Any]


class TaskPage(TypedDict):
    tasks: list[Task]
    next_cursor: str | None


class ChangedTask(TypedDict):
    provider: str
    provider_task_id: str | None
    state: str
    result: dict[str, Any] | None


class Change(TypedDict):
    seq: int
    task_ref: str
    from_state: str | None
    to_state: str
    source: str
    source_id: str | None
    at: Time
    task: ChangedTask


class ChangePage(TypedDict):
    changes: list[Change]
    last_seq: int


class Artifact(TypedDict):
    """An output's metadata, fit for any reader: never its source, key or lease."""

    name: str
    state: str
    content_type: str | None
    size: int | None
    sha256: str | None
    expires_at: Time
    archived_at: Time | None
    source_host: str | None
    attempts: int
    last_error: str | None


class ListedArtifact(Artifact):
    """An output in a task's list: its URL once archived, signed for a `<video src>`."""

    url: str | None
    url_expires_at: Time | None


class ApiKey(TypedDict):
    id: str
    prefix: str
    name: str
    scope: Scope
    owner: str | None
    created_at: Time
    last_used_at: Time | None
    revoked_at: Time | None


class ApiKeyWithSecret(ApiKey):
    key: str


class KeyList(TypedDict):
    keys: list[ApiKey]


class Secret(TypedDict):
    prefix: str
    expires_at: Time | None


class Failure(TypedDict):
    at: Time
    status_code: int | None
    latency_ms: float | None  # with its fraction: 3.954
    error: str | None
    answer: str | None
    msg_id: str
    task_ref: str


class Health(TypedDict):
    dispatches: dict[str, int]
    recent_failures: list[Failure]


class Endpoint(TypedDict):
    id: str
    kind: str  # http, nats or amqp: what the URL names
    url: str
    description: str
    providers: list[str] | None
    owners: list[str] | None
    event_types: list[str] | None
    include_unconfirmed: bool
    secrets: list[Secret]
    enabled: bool
    disabled_reason: str | None
    disabled_at: Time | None
    failing_since: Time | None
    last_success_at: Time | None
    created_at: Time
    updated_at: Time
    health: NotRequired[Health]


class EndpointWithSecret(Endpoint):
    secret: str


class EndpointList(TypedDict):
    endpoints: list[Endpoint]


class Requeued(TypedDict):
    requeued: int


class Alive(TypedDict):
    status: Literal["ok"]


class Readiness(TypedDict):
    """`/readyz` at 200: the database takes writes (`ready`), or on PostgreSQL it does not
    and the local spool has room (`spooling`, with why and how many deliveries it holds).
    `quarantined`, when above 0: spooled deliveries an operator must look at."""

    status: Literal["ready", "spooling"]
    reason: NotRequired[str]
    depth: NotRequired[int]
    quarantined: NotRequired[int]


REQUESTS: tuple[type[_Body], ...] = (
    NewTask,
    AttachTaskId,
    NewKey,
    NewEndpoint,
    EndpointChanges,
    Rotation,
)
ANSWERS: tuple[type, ...] = (
    Error,
    Outcome,
    Task,
    TaskStory,
    TaskPage,
    ChangePage,
    Artifact,
    ListedArtifact,
    ApiKey,
    ApiKeyWithSecret,
    KeyList,
    Endpoint,
    EndpointWithSecret,
    EndpointList,
    Requeued,
    Alive,
    Readiness,
)
REF = "#/components/schemas/{model}"
# Reports whose shape follows the providers and states configured (audit, dashboard series,
# kept payloads): a JSON object, described in the README rather than field by field.
JSON_OBJECT: dict[str, Any] = {"type": "object"}


def ref(kind: type) -> dict[str, str]:
    """A `$ref` to one of the contract's types in the description's components."""
    return {"$ref": REF.format(model=kind.__name__)}


def component_schemas() -> dict[str, Any]:
    """Every request model and answer type as JSON Schema (2020-12, OpenAPI 3.1's dialect),
    by name; types they nest come along under their own names."""
    schemas: dict[str, Any] = {}
    for kind in (*REQUESTS, *ANSWERS):
        schema = TypeAdapter(kind).json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[kind.__name__] = schema
    return schemas


Model = TypeVar("Model", bound=_Body)


def validated(model: type[Model], body: object) -> Model:
    """`body` read as `model`: an unknown field is a 400 naming the allowed ones; a wrong
    type or size a 422 naming the field and what it must be."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        unknown = sorted({str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden"})
        if unknown:
            allowed = ", ".join(model.model_fields)
            raise MalformedBody(
                f"unknown field(s): {', '.join(map(repr, unknown))}; allowed: {allowed}"
            ) from None
        said = dict.fromkeys(_said(model, e) for e in errors)  # one line per field, in order
        raise Unprocessable("; ".join(list(said)[:3])) from None


def _said(model: type[_Body], error: Any) -> str:
    """One refusal in the house's words: "url is required", "scope must be one of: …"."""
    field = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "missing":
        return f"{field} is required"
    if field in model.MUST:
        return f"{field} must be {model.MUST[field]}"
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
