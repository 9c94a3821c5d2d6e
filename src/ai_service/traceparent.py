"""The W3C Trace Context `traceparent` header: what a job keeps of its caller's trace.

A create request may carry `traceparent: 00-<trace-id>-<parent-id>-<flags>`; the job
stores it (`jobs.traceparent`) and the webhook of its terminal event carries it on.
A header that is not a valid traceparent is ignored, not refused: the W3C rule for a
receiver is to start a new trace rather than fail the request.
"""

from __future__ import annotations

import re

# version-traceid-parentid-flags, lower-case hex only; a later version may append
# fields after a dash (read as version 00, as the specification asks).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


def parse_traceparent(value: str | None) -> str | None:
    """The valid traceparent in `value`, as version 00; None when there is none.

    Invalid: another shape, upper-case hex, version `ff`, extra fields on version 00,
    an all-zero trace id or parent id.
    """
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return f"00-{trace_id}-{parent_id}-{flags}"
