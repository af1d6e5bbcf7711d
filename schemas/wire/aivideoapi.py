"""AI Video API's wire format: EvoLink's paths and shapes, known only from third-party code.

Its task id has three spellings, its answers may come in a `{"code": 200, "data": {...}}`
envelope, and its result URLs are `results` (EvoLink's) or `output.urls`: both are read.
"""

from __future__ import annotations

from schemas.wire.evolink import Gateway
from schemas.wire.formats import WireFormat

GATEWAY = Gateway(
    WireFormat.AIVIDEOAPI, ("id", "taskId", "task_id"), enveloped=True, output_urls=True
)
SPEC = GATEWAY.spec()
