"""What a provider client needs of a circuit breaker, and how a call's outcome feeds it.

The breakers themselves live in the worker (`worker.breaker`); provider clients
only see this protocol, so they stay free of worker state. `OPEN_GATE` lets every
call through and takes every answer at face value (no breaker configured).

How an outcome counts (`settle`):

    outcome                                         breaker        job failure
    ----------------------------------------------  -------------  ---------------------------
    an answer (2xx, 4xx, 429)                       success        unchanged
    connection refused/reset, 502, 503, 504, other  failure        unchanged (an outage)
    5xx except 500
    500, and the endpoint's probe answers           success        provider_error, retryable:
                                                                   the request failed, not the
                                                                   server (e.g. undecodable
                                                                   audio); attempts count
    500, and the probe fails too                    failure        unchanged (an outage)
    timeout of the request                          neither        unchanged
"""

from __future__ import annotations

from typing import Protocol

from ai_service.errors import JobFailure
from ai_service.jobs import ErrorCategory

# Appended to the message of a 500 that is not an outage.
NOT_AN_OUTAGE = " (the server's probe answers: this request failed, not the server)"


class Gate(Protocol):
    """One endpoint's circuit breaker, as a provider client uses it."""

    def admits(self) -> bool:
        """Whether a request could go now (False: the circuit is open); takes nothing."""
        ...

    def acquire(self) -> bool:
        """Whether a request may go to the endpoint now (False: the circuit is open)."""
        ...

    def release(self) -> None:
        """The request let through by `acquire` is over (call in `finally`)."""
        ...

    def succeeded(self) -> None:
        """The endpoint answered."""
        ...

    def failed(self, detail: str) -> None:
        """The endpoint could not be reached or answered 5xx (`detail` is secret-free)."""
        ...

    async def healthy(self) -> bool:
        """Whether the endpoint's status probe answers now (shared, rate-limited)."""
        ...

    def refusal(self, provider: str) -> JobFailure:
        """The failure of a job not sent because the circuit is open."""
        ...


class _OpenGate:
    """No breaker: every request goes through, every answer counts as it is."""

    def admits(self) -> bool:
        return True

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None

    def succeeded(self) -> None:
        return None

    def failed(self, detail: str) -> None:
        return None

    async def healthy(self) -> bool:
        return False  # unknown: a 500 stays what its status says

    def refusal(self, provider: str) -> JobFailure:
        return JobFailure(ErrorCategory.PROVIDER_UNAVAILABLE, f"{provider}: not available")


OPEN_GATE: Gate = _OpenGate()


async def settle(gate: Gate, failure: JobFailure | None) -> JobFailure | None:
    """Feed a call's outcome to `gate`; returns the failure to raise (see the module doc).

    `failure` is None for a success. HTTP answers carry `details["status_code"]`
    (`http_errors`); connection failures carry none.
    """
    if failure is None:
        gate.succeeded()
        return None
    status = (failure.details or {}).get("status_code")
    if failure.category == ErrorCategory.PROVIDER_UNAVAILABLE:
        if status == 500 and await gate.healthy():
            gate.succeeded()
            return JobFailure(
                ErrorCategory.PROVIDER_ERROR,
                failure.message + NOT_AN_OUTAGE,
                retryable=True,
                details=failure.details,
            )
        gate.failed(failure.message)
        return failure
    if status is not None:
        gate.succeeded()  # it answered: reachable, whatever it thought of the request
    return failure
