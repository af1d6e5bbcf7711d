"""The wire formats by name (`WireFormat`) and what each format's module registers (`WireSpec`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from schemas.definition import Definition
from schemas.states import State
from schemas.wire.observation import Lifetime, Observation


class WireFormat(StrEnum):
    OPENAI = "openai"
    APIDOT = "apidot"
    EVOLINK = "evolink"
    AIVIDEOAPI = "aivideoapi"

    @property
    def signs_callbacks(self) -> bool:
        """Standard Webhooks senders sign; the gateways bind callbacks by our URL token."""
        return self is WireFormat.OPENAI


# A provider kind: a format written in code, or one read from a definition file.
Kind = WireFormat | Definition


def scheme_of(kind: Kind) -> str:
    """How a kind's callbacks are authenticated (`schemas.definition.VERIFY_SCHEMES`):
    `standard-webhooks` ones come to `/webhooks/{name}`, the others to a task's URL."""
    if isinstance(kind, Definition):
        return kind.verify
    return "standard-webhooks" if kind is WireFormat.OPENAI else "url-token"


# A status (or submit) body, the state to assume when it names none (None: it must say),
# and its result URLs' lifetime.
StatusReader = Callable[[object, State | None, Lifetime], Observation]
CallbackReader = Callable[[object, Lifetime], Observation]
TaskIdReader = Callable[[object], str]
# The model, the caller's request, and our callback URL (None: the task has none).
SubmitBuilder = Callable[[str, dict[str, object], str | None], dict[str, object]]
SubmitReader = Callable[[object], Observation]


@dataclass(frozen=True, slots=True)
class WireSpec:
    """Everything one wire format knows: its endpoints, and how its bodies read and write.

    `status_path` holds `{task_id}`; without `read_callback` a callback reads as a status body.
    """

    submit_path: str
    status_path: str
    read_status: StatusReader
    read_task_id: TaskIdReader
    build_submit: SubmitBuilder
    read_callback: CallbackReader | None = None
    # The submit answer, when it is not shaped like a status body.
    read_submit: SubmitReader | None = None
