"""Simulator configuration: frozen dataclasses for task lifecycles and injected faults.

Every rate is a probability in [0, 1]; every duration carries its unit (`_s` = seconds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simulator.files import MAX_VIDEO_BYTES, MIN_VIDEO_BYTES

FORMATS: tuple[str, ...] = ("openai", "apidot", "evolink", "replicate", "fal", "kie")
GATEWAY_FORMATS: tuple[str, ...] = ("apidot", "evolink")
# Formats whose callback goes to a URL given with each task (not one configured URL).
PER_TASK_URL_FORMATS: tuple[str, ...] = ("apidot", "evolink", "replicate", "fal", "kie")
# Formats with a cancelled state of their own; elsewhere a cancelled outcome ends failed
# (fal's cancelled request has no documented shape: it ends as a failed one).
CANCELLING_FORMATS: tuple[str, ...] = ("evolink", "replicate")
OUTPUT_SHAPES: tuple[str, ...] = ("list", "string", "either")
OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "cancelled")


class SimulatorError(ValueError):
    """Root error of the simulator: a configuration or control request it cannot accept."""

    def __init__(self, message: str, *, field_name: str | None = None) -> None:
        super().__init__(message)
        self.field_name = field_name


@dataclass(frozen=True)
class Faults:
    """Fault injection rates and parameters; all faults are off by default."""

    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    delay_rate: float = 0.0
    max_callback_delay_s: float = 1.0
    reorder_rate: float = 0.0
    bad_signature_rate: float = 0.0
    poll_429_rate: float = 0.0
    poll_500_rate: float = 0.0
    poll_slow_rate: float = 0.0
    slow_poll_s: float = 1.0
    poll_timeout_rate: float = 0.0
    timeout_poll_s: float = 30.0
    retry_after_s: int = 1
    rate_limit_rps: Mapping[str, float] = field(default_factory=dict)
    down: bool = False
    # The real providers' tricks, each per callback (see `simulator.tricks`): an extra
    # callback with a status word nobody documents, an extra signed non-video OpenAI
    # event, EvoLink's `cancelled`/`canceled` spellings and `{"data": ...}` envelope, and
    # a gateway callback sent to its task's URL but naming another task id. Then the
    # platforms': a fal webhook whose `gateway_request_id` differs from its `request_id`
    # (fal retried inside), a succeeded fal webhook with `payload: null` and a
    # `payload_error`, a kie callback saying `data.task_id` instead of `data.taskId`.
    unknown_status_rate: float = 0.0
    non_video_event_rate: float = 0.0
    cancel_spelling_rate: float = 0.0
    envelope_rate: float = 0.0
    wrong_task_id_rate: float = 0.0
    gateway_retry_rate: float = 0.0
    payload_error_rate: float = 0.0
    snake_task_id_rate: float = 0.0
    # Media downloads (see `simulator.media`): at most one fault per succeeded task, drawn
    # when it is submitted, in this order; it hits every download of each of its files.
    # A redirect to a loopback or cloud-metadata address; a body cut short (Content-Length
    # says all, half is sent, then the connection closes); `media_500_count` 500s before
    # the file is served; a body trickling out over `media_slow_s` seconds.
    media_redirect_rate: float = 0.0
    media_truncated_rate: float = 0.0
    media_500_rate: float = 0.0
    media_500_count: int = 1
    media_slow_rate: float = 0.0
    media_slow_s: float = 2.0

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            if item.name.endswith("_rate"):
                check_rate(item.name, getattr(self, item.name))
        for name in (
            "max_callback_delay_s",
            "slow_poll_s",
            "timeout_poll_s",
            "retry_after_s",
            "media_500_count",
            "media_slow_s",
        ):
            if getattr(self, name) < 0:
                raise SimulatorError(f"{name} must not be negative", field_name=name)
        for fmt, rps in self.rate_limit_rps.items():
            if fmt not in FORMATS or rps <= 0:
                raise SimulatorError(f"bad rate limit {fmt}={rps}", field_name="rate_limit_rps")


@dataclass(frozen=True)
class Lifecycle:
    """How long tasks take and how they end (outcome weights need not sum to 1)."""

    min_duration_s: float = 2.0
    max_duration_s: float = 10.0
    max_queued_share: float = 0.3
    succeeded_weight: float = 0.8
    failed_weight: float = 0.15
    cancelled_weight: float = 0.05
    progress_callbacks: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_duration_s <= self.max_duration_s:
            raise SimulatorError("need 0 <= min_duration_s <= max_duration_s")
        check_rate("max_queued_share", self.max_queued_share)
        weights = (self.succeeded_weight, self.failed_weight, self.cancelled_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise SimulatorError("outcome weights must be >= 0 with a positive sum")


@dataclass(frozen=True)
class SimConfig:
    """Everything one simulator server needs; `time_scale` multiplies all retry backoffs."""

    webhook_url: str | None = None
    webhook_secret: str | None = None
    api_key: str | None = None
    seed: int = 0
    time_scale: float = 1.0
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    faults: Faults = field(default_factory=Faults)
    webhook_retry_delays_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    callback_retry_delays_s: tuple[float, ...] = (1.0, 2.0, 4.0)
    callback_timeout_s: float = 10.0
    # Result media (see `simulator.media`): served under `{server}/media` unless another
    # base is given; each file expires `media_ttl_s` after its task ended; a video is
    # `media_bytes` long (it is streamed, so it may be hundreds of MB).
    media_base_url: str | None = None
    media_ttl_s: int = 3600
    media_bytes: int = 4096
    apidot_files_under_output: bool = False
    # Replicate: the account's Standard Webhooks secret (None: one drawn from the seed),
    # served at `/replicate/v1/webhooks/default/secret`; `output` as a list of URLs, one
    # URL string, or either (chosen per prediction).
    replicate_webhook_secret: str | None = None
    replicate_output_shape: str = "either"
    # fal.ai: the user id its webhooks are signed for, and where its JWKS is served.
    fal_user_id: str = "sim-fal-user"
    fal_jwks_path: str = "/fal/.well-known/jwks.json"
    # kie.ai: the account's webhook HMAC key; None sends its callbacks unsigned.
    kie_webhook_key: str | None = None
    # Described gateways (see `simulator.described`): each a description or its JSON file.
    described: tuple[Mapping[str, Any] | str, ...] = ()

    def __post_init__(self) -> None:
        if self.webhook_url and not self.webhook_secret:
            raise SimulatorError("webhook_url needs webhook_secret", field_name="webhook_secret")
        for name in ("webhook_secret", "replicate_webhook_secret"):
            secret = getattr(self, name)
            if secret is not None and not secret.startswith("whsec_"):
                raise SimulatorError(f"{name} must start with whsec_", field_name=name)
        if self.replicate_output_shape not in OUTPUT_SHAPES:
            raise SimulatorError(
                f"replicate_output_shape must be one of {list(OUTPUT_SHAPES)}",
                field_name="replicate_output_shape",
            )
        if not self.fal_jwks_path.startswith("/") or not self.fal_user_id:
            raise SimulatorError("fal_jwks_path must start with / and fal_user_id be set")
        if self.time_scale <= 0:
            raise SimulatorError("time_scale must be positive", field_name="time_scale")
        if self.media_ttl_s < 0:
            raise SimulatorError("media_ttl_s must not be negative", field_name="media_ttl_s")
        if not MIN_VIDEO_BYTES <= self.media_bytes <= MAX_VIDEO_BYTES:
            raise SimulatorError(
                f"media_bytes must be within [{MIN_VIDEO_BYTES}, {MAX_VIDEO_BYTES}]",
                field_name="media_bytes",
            )


def check_rate(name: str, value: float) -> None:
    """Raise unless `value` is a probability."""
    if not 0.0 <= value <= 1.0:
        raise SimulatorError(f"{name} must be within [0, 1], got {value}", field_name=name)


def update_faults(current: Faults, changes: Mapping[str, Any]) -> Faults:
    """Return `current` with the fields named in `changes` replaced (omitted fields are kept)."""
    known = {item.name: item for item in dataclasses.fields(Faults)}
    values: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in known:
            raise SimulatorError(f"unknown fault {name!r}", field_name=name)
        values[name] = coerce_fault(name, value)
    return dataclasses.replace(current, **values)


INTEGER_FAULTS = frozenset({"retry_after_s", "media_500_count"})


def coerce_fault(name: str, value: Any) -> Any:
    """Check the JSON type of one fault value and convert it to the field's type."""
    if name == "down":
        if not isinstance(value, bool):
            raise SimulatorError("down must be a boolean", field_name=name)
        return value
    if name == "rate_limit_rps":
        if not isinstance(value, dict):
            raise SimulatorError("rate_limit_rps must be an object", field_name=name)
        return {str(fmt): float(coerce_number(name, rps)) for fmt, rps in value.items()}
    number = coerce_number(name, value)
    return int(number) if name in INTEGER_FAULTS else float(number)


def coerce_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SimulatorError(f"{name} must be a number", field_name=name)
    return float(value)


def faults_as_dict(faults: Faults) -> dict[str, Any]:
    """JSON-ready view of `faults`."""
    data = dataclasses.asdict(faults)
    data["rate_limit_rps"] = dict(faults.rate_limit_rps)
    return data
