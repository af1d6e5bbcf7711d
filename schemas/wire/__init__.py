"""Provider wire formats: callback and status bodies normalized into one `Observation`.

Four formats are built in (see PROVIDERS.md): `openai` in code (video objects and signed
video events), and as definitions in `builtin/`: `apidot` (APIDot, Vidgo), `evolink`
(EvoLink) and `aivideoapi` (AI Video API).
"""

from schemas.wire.fields import CODE_MAX_CHARS, ID_MAX_CHARS, MESSAGE_MAX_CHARS, URL_MAX_CHARS
from schemas.wire.formats import Kind, WireFormat, WireSpec
from schemas.wire.observation import Observation
from schemas.wire.openai import CONTENT_PATH as OPENAI_CONTENT_PATH
from schemas.wire.openai import CONTENT_VARIANTS as OPENAI_CONTENT_VARIANTS
from schemas.wire.openai import content_paths as openai_content_paths
from schemas.wire.registry import (
    SPECS,
    STATUS_PATHS,
    SUBMIT_PATHS,
    build_submit_body,
    normalize_callback,
    normalize_result,
    normalize_status,
    parse_submit_response,
    request_headers,
    result_path,
    spec,
    status_path,
    submit_path,
    task_id_hint,
    task_id_of,
)

__all__ = [
    "CODE_MAX_CHARS",
    "ID_MAX_CHARS",
    "MESSAGE_MAX_CHARS",
    "OPENAI_CONTENT_PATH",
    "OPENAI_CONTENT_VARIANTS",
    "SPECS",
    "STATUS_PATHS",
    "SUBMIT_PATHS",
    "URL_MAX_CHARS",
    "Kind",
    "Observation",
    "WireFormat",
    "WireSpec",
    "build_submit_body",
    "normalize_callback",
    "normalize_result",
    "normalize_status",
    "openai_content_paths",
    "parse_submit_response",
    "request_headers",
    "result_path",
    "spec",
    "status_path",
    "submit_path",
    "task_id_hint",
    "task_id_of",
]
