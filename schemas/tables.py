"""The ledger's tables: tasks, deliveries (callbacks), observations (polls) and transitions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on every backend (SQLite drops tzinfo)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants 64 bits.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index))


def _json(nullable: bool = True) -> Any:
    return Field(sa_column=sa.Column(sa.JSON(), nullable=nullable))


def _partial_index(name: str, *columns: str, where: str) -> sa.Index:
    """An index of only the rows matching `where`, on both backends."""
    condition = sa.text(where)
    return sa.Index(name, *columns, sqlite_where=condition, postgresql_where=condition)


# Column widths, in characters: what fills a column is refused or trimmed to fit.
TASK_ID_MAX_CHARS = 200  # `provider_task_id` of a task and of a delivery
DELIVERY_KEY_MAX_CHARS = 200
REASON_MAX_CHARS = 200  # `task.attention`, `delivery.reason`
LABEL_MAX_CHARS = 200  # `task.owner`, `task.model`
# `observation.body` is TEXT: a provider's answer is kept up to this many characters.
BODY_KEEP_CHARS = 4_000
# A consumer's answer to a notification is kept up to this many characters.
ANSWER_KEEP_CHARS = 500

UNFOLDED_OUTCOMES = ("unrecognized", "held", "foreign")
# An artifact waiting for the archiver: the few rows the archive's due query reads.
ARTIFACT_PENDING_WHERE = "state = 'pending'"
# Three comparisons, not an IN list: SQLite evaluates a partial index's condition on every
# INSERT into its table, and an IN list builds an ephemeral table each time (migration
# 0010). Queries repeat it word for word, so that each database matches the index to them.
UNFOLDED_WHERE = "(" + " OR ".join(f"outcome = '{word}'" for word in UNFOLDED_OUTCOMES) + ")"


class TaskRow(SQLModel, table=True):
    __tablename__ = "task"
    __table_args__ = (
        sa.UniqueConstraint("provider", "provider_task_id", name="uq_task_provider_task_id"),
        _partial_index("ix_task_due", "provider", "next_poll_at", where="next_poll_at IS NOT NULL"),
        sa.Index("ix_task_created_at", "created_at"),
    )

    ref: str = Field(primary_key=True, max_length=40)
    provider: str = Field(max_length=64)
    provider_task_id: str | None = Field(default=None, max_length=TASK_ID_MAX_CHARS)
    owner: str = Field(default="", max_length=LABEL_MAX_CHARS)
    model: str = Field(default="", max_length=LABEL_MAX_CHARS)
    request: dict[str, Any] | None = _json()
    state: str = Field(max_length=16)
    progress: int = 0
    result: dict[str, Any] | None = _json()
    state_source: str = Field(max_length=16)
    authority: int = 0
    confirmed: bool = True
    conflict: bool = False
    # The first real final state came from a poll: the callback was missed (or late).
    recovered: bool = False
    version: int = 1
    created_at: datetime = _when()
    updated_at: datetime = _when()
    last_event_at: datetime | None = _when(nullable=True)
    terminal_at: datetime | None = _when(nullable=True)
    next_poll_at: datetime | None = _when(nullable=True)
    poll_attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = _when(nullable=True)
    # Set when taskledger itself submits the task: pending, sending, sent, rejected or unknown.
    submission: str | None = Field(default=None, max_length=16)
    # Why an operator should look at this task (unreadable answers, an unconfirmed end).
    attention: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class DeliveryRow(SQLModel, table=True):
    __tablename__ = "delivery"
    # A delivery is known by the provider's task id and its message's key. The one unique
    # index turns a resend into a counted duplicate, and its prefix finds a task's
    # deliveries, matched or still waiting for `PATCH`: every delivery a task holds carries
    # the task's provider id. Each index is one more scattered page a delivery dirties.
    __table_args__ = (
        sa.UniqueConstraint(
            "provider", "provider_task_id", "delivery_key", name="uq_delivery_task_key"
        ),
        # The few deliveries kept but not folded in, by task: see `UNFOLDED_OUTCOMES`.
        _partial_index("ix_delivery_unfolded", "task_ref", where=UNFOLDED_WHERE),
        # The deliveries with no task, newest first (`GET /v1/deliveries`); a matched one,
        # nearly all of them, is never in it.
        _partial_index("ix_delivery_taskless", "received_at", "id", where="task_ref IS NULL"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    provider: str = Field(max_length=64)
    delivery_key: str = Field(max_length=DELIVERY_KEY_MAX_CHARS)
    task_ref: str | None = Field(default=None, foreign_key="task.ref", max_length=40)
    provider_task_id: str = Field(max_length=TASK_ID_MAX_CHARS)
    body: bytes = Field(sa_column=sa.Column(sa.LargeBinary(), nullable=False))
    headers: dict[str, Any] | None = _json()
    auth: str = Field(max_length=16)
    state: str | None = Field(default=None, max_length=16)
    outcome: str = Field(max_length=16)
    # Why a kept delivery was not folded in (`unrecognized`, `held`, `foreign`, `ignored`).
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)
    duplicate_count: int = 0
    received_at: datetime = _when()
    last_seen_at: datetime = _when()


class ObservationRow(SQLModel, table=True):
    __tablename__ = "observation"
    __table_args__ = (sa.Index("ix_observation_task_ref", "task_ref"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    task_ref: str = Field(foreign_key="task.ref", max_length=40)
    observed_at: datetime = _when()
    http_status: int | None = None
    state: str | None = Field(default=None, max_length=16)
    progress: int | None = None
    body: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    outcome: str = Field(max_length=16)


class TransitionRow(SQLModel, table=True):
    __tablename__ = "transition"
    __table_args__ = (sa.Index("ix_transition_task_ref", "task_ref"),)

    seq: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    task_ref: str = Field(foreign_key="task.ref", max_length=40)
    from_state: str | None = Field(default=None, max_length=16)
    to_state: str = Field(max_length=16)
    source: str = Field(max_length=16)
    source_id: str | None = Field(default=None, max_length=200)
    at: datetime = _when()


class ArtifactRow(SQLModel, table=True):
    """One output of a succeeded task, copied (or to be copied) to the archive.

    Written `pending` in the transaction that makes the task's success authoritative; the
    archiver leases it, fetches the provider's copy before `expires_at`, and records what
    came of it: `archived` (with where, how big and its SHA-256), `failed` or `missed`.
    """

    __tablename__ = "artifact"
    __table_args__ = (
        sa.UniqueConstraint("task_ref", "name", name="uq_artifact_task_name"),
        # Earliest expiry first, among the pending only.
        _partial_index("ix_artifact_due", "expires_at", where=ARTIFACT_PENDING_WHERE),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    task_ref: str = Field(foreign_key="task.ref", max_length=40)
    provider: str = Field(max_length=64)
    # `video`, `thumbnail` (OpenAI's variants), `output-1`, `output-2`… (a result's URLs).
    name: str = Field(max_length=40)
    # Where in the task's result its source is: `content:<variant>` or `urls:<index>`.
    source: str = Field(max_length=60)
    state: str = Field(max_length=16)
    expires_at: datetime = _when()
    next_attempt_at: datetime = _when()
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = _when(nullable=True)
    storage_key: str | None = Field(default=None, max_length=200)
    size: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger(), nullable=True))
    sha256: str | None = Field(default=None, max_length=64)
    content_type: str | None = Field(default=None, max_length=100)
    source_host: str | None = Field(default=None, max_length=255)
    archived_at: datetime | None = _when(nullable=True)
    last_error: str | None = Field(default=None, max_length=REASON_MAX_CHARS)
    created_at: datetime = _when()


class EndpointRow(SQLModel, table=True):
    """Where the product is told of authoritative changes: an HTTPS URL signed with Standard
    Webhooks, or a broker (a NATS JetStream subject, a RabbitMQ exchange)."""

    __tablename__ = "endpoint"

    id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(max_length=16)  # http, nats, amqp
    url: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    description: str = Field(default="", max_length=LABEL_MAX_CHARS)
    # Filters: None lets everything through.
    providers: list[str] | None = _json()
    owners: list[str] | None = _json()
    event_types: list[str] | None = _json()
    include_unconfirmed: bool = False
    # Signing secrets, newest first: [{"secret": "whsec_…", "expires_at": ISO or null}].
    secrets: list[dict[str, Any]] = _json(nullable=False)
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)
    disabled_at: datetime | None = _when(nullable=True)
    # Since when every attempt failed (None: the last one succeeded), for auto-disabling.
    failing_since: datetime | None = _when(nullable=True)
    last_success_at: datetime | None = _when(nullable=True)
    created_at: datetime = _when()
    updated_at: datetime = _when()


class MessageRow(SQLModel, table=True):
    """The outbox: one authoritative change of a task, written in the transaction that made
    it, with the event as it will be sent. The relay fans it out to matching endpoints."""

    __tablename__ = "message"
    __table_args__ = (
        _partial_index("ix_message_unsent", "id", where="fanned_out = false"),
        sa.Index("ix_message_task_ref", "task_ref"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    # The `webhook-id`: the same on every attempt, so consumers can deduplicate.
    msg_id: str = Field(max_length=40, unique=True)
    task_ref: str = Field(foreign_key="task.ref", max_length=40)
    seq: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger(), nullable=True))
    event_type: str = Field(max_length=32)
    payload: dict[str, Any] = _json(nullable=False)
    unconfirmed: bool = False
    fanned_out: bool = False
    created_at: datetime = _when()


class DispatchRow(SQLModel, table=True):
    """One message on its way to one endpoint, with its own retry schedule."""

    __tablename__ = "dispatch"
    __table_args__ = (
        sa.UniqueConstraint("message_id", "endpoint_id", name="uq_dispatch_message_endpoint"),
        _partial_index("ix_dispatch_due", "next_attempt_at", where="state = 'pending'"),
        sa.Index("ix_dispatch_endpoint", "endpoint_id", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    message_id: int = Field(sa_column=sa.Column(BigId, sa.ForeignKey("message.id"), nullable=False))
    endpoint_id: str = Field(foreign_key="endpoint.id", max_length=40)
    state: str = Field(max_length=16)  # pending, delivered, failed
    attempts: int = 0
    next_attempt_at: datetime = _when()
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: datetime | None = _when(nullable=True)
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=REASON_MAX_CHARS)
    delivered_at: datetime | None = _when(nullable=True)
    created_at: datetime = _when()


class DispatchAttemptRow(SQLModel, table=True):
    """One try at delivering a message to an endpoint, as it went."""

    __tablename__ = "dispatch_attempt"
    __table_args__ = (sa.Index("ix_dispatch_attempt_dispatch", "dispatch_id"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    dispatch_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("dispatch.id"), nullable=False)
    )
    at: datetime = _when()
    status_code: int | None = None
    latency_ms: float | None = None
    answer: str | None = Field(default=None, max_length=ANSWER_KEEP_CHARS)
    error: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


METADATA = SQLModel.metadata
TASK = METADATA.tables["task"]
DELIVERY = METADATA.tables["delivery"]
OBSERVATION = METADATA.tables["observation"]
TRANSITION = METADATA.tables["transition"]
ARTIFACT = METADATA.tables["artifact"]
ENDPOINT = METADATA.tables["endpoint"]
MESSAGE = METADATA.tables["message"]
DISPATCH = METADATA.tables["dispatch"]
DISPATCH_ATTEMPT = METADATA.tables["dispatch_attempt"]


# An `Idempotency-Key` header, in characters.
IDEMPOTENCY_KEY_MAX_CHARS = 200


class ApiKeyRow(SQLModel, table=True):
    """An API key: `tlk_<id>_<secret>`, shown once. Only the secret's SHA-256 is kept; the
    id is how the key is listed and revoked. A key limited to an `owner` sees only that
    owner's tasks. Revoked keys stay, for the record."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=LABEL_MAX_CHARS)
    secret_sha256: str = Field(max_length=64)
    scope: str = Field(max_length=16)  # admin, write, read
    owner: str | None = Field(default=None, max_length=LABEL_MAX_CHARS)
    created_at: datetime = _when()
    last_used_at: datetime | None = _when(nullable=True)
    revoked_at: datetime | None = _when(nullable=True)


class IdempotencyRow(SQLModel, table=True):
    """The first answer to a registration made with an `Idempotency-Key`: a retry with the
    same key and request gets it again, with another request a 409. Keys are a caller's
    own (an API key's id, or `admin` for the bootstrap token)."""

    __tablename__ = "idempotency_key"
    __table_args__ = (
        sa.UniqueConstraint("caller", "key", name="uq_idempotency_caller_key"),
        sa.Index("ix_idempotency_created_at", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    caller: str = Field(max_length=40)
    key: str = Field(max_length=IDEMPOTENCY_KEY_MAX_CHARS)
    request_sha256: str = Field(max_length=64)
    task_ref: str = Field(foreign_key="task.ref", max_length=40)
    status: int
    answer: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    created_at: datetime = _when()


API_KEY = METADATA.tables["api_key"]
IDEMPOTENCY = METADATA.tables["idempotency_key"]
