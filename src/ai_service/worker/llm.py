"""The built-in LLM handler: `llm_chat`, `chat_completion`, `call_analysis`.

Jobs whose `model_profile` equals `LLM_MODEL` are sent to the OpenAI-compatible
`LLM_BASE_URL` (official `openai` SDK, no SDK retries: the queue retries).
Input is either `messages` or compact `system` / `user`; of the rest only
`max_tokens`, `response_format`, `temperature`, `top_p` and `stop` are read, so
callers may add domain metadata freely.

With `LLM_FORWARD_PRIORITY=true` the job's priority goes along as vLLM's
request `priority`, negated (vLLM serves lower values first).

Provider answers map to categories (see `providers.http_errors` for the table);
for chat a 400 means the caller's request does not fit the model (too long,
bad `response_format`), so it is `invalid_input` here.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import openai

from ai_service import tracing
from ai_service.config import Settings
from ai_service.errors import JobFailure
from ai_service.jobs import ErrorCategory, Job
from ai_service.providers import http_errors
from ai_service.providers.gate import settle
from ai_service.redact import redact_text, redact_url, settings_secrets
from ai_service.urls import join_url, url_path
from ai_service.worker.handler import HandlerContext, HandlerSpec
from ai_service.worker.registry import LLM_TASK_TYPES

TASK_TYPES = LLM_TASK_TYPES
PROVIDER = "llm"
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
_PASSTHROUGH = ("max_tokens", "response_format", "temperature", "top_p", "stop")


def openai_base_url(url: str) -> tuple[str, dict[str, str]]:
    """SDK base URL and query parameters from `LLM_BASE_URL`.

    Accepts `http://host:8000` and `http://host:8000/v1`; a query string (some
    gateways take `?api_key=`) is split off, because the SDK appends paths to
    the base URL and sends the query separately.
    """
    parts = urlsplit(url)
    without_query = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    base = join_url(without_query, "" if url_path(url).endswith("/v1") else "/v1")
    return base, dict(parse_qsl(parts.query, keep_blank_values=True))


def chat_request(job_input: dict[str, Any]) -> dict[str, Any]:
    """Build the chat-completions arguments from a job's input (no model).

    Raises `JobFailure(invalid_input)` when there are no usable messages or a
    read field has the wrong type.
    """
    messages: list[dict[str, Any]]
    raw = job_input.get("messages")
    if raw is not None:
        if not isinstance(raw, list) or not raw:
            raise _invalid("input.messages must be a non-empty list of chat messages")
        messages = []
        for index, message in enumerate(raw):
            if (
                not isinstance(message, dict)
                or message.get("role") not in _ROLES
                or "content" not in message
                or not isinstance(message["content"], str | list)
            ):
                raise _invalid(
                    f"input.messages[{index}] must be an object with a role "
                    f"({', '.join(sorted(_ROLES))}) and a content"
                )
            messages.append(message)
    else:
        messages = []
        for role in ("system", "user"):
            value = job_input.get(role)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise _invalid(f"input.{role} must be a non-empty string")
            messages.append({"role": role, "content": value})
        if not any(m["role"] == "user" for m in messages):
            raise _invalid("input needs `messages` or a non-empty `user` text")
    request: dict[str, Any] = {"messages": messages}
    for name in _PASSTHROUGH:
        if job_input.get(name) is not None:
            request[name] = job_input[name]
    _check_types(request)
    return request


def _check_types(request: dict[str, Any]) -> None:
    max_tokens = request.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _invalid("input.max_tokens must be a positive integer")
    for name in ("temperature", "top_p"):
        value = request.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise _invalid(f"input.{name} must be a number")
    fmt = request.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str)):
        raise _invalid('input.response_format must be an object like {"type": "json_object"}')
    stop = request.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _invalid("input.stop must be a string or a list of strings")


def _invalid(message: str) -> JobFailure:
    return JobFailure(ErrorCategory.INVALID_INPUT, message, retryable=False)


# Requests in flight per HTTP client (connection pool) of the LLM handler, about.
CONNECTIONS_PER_CLIENT = 8


def client_shards(settings: Settings) -> int:
    """HTTP clients for the most LLM requests the worker may have in flight."""
    most = max(
        settings.worker_concurrency,
        settings.worker_claim_limit,
        settings.llm_concurrency,
        settings.llm_concurrency_max,
    )
    return max(1, min(32, -(-most // CONNECTIONS_PER_CLIENT)))


class LLMHandler:
    """Holds the process's OpenAI client; `handle` runs one job."""

    def __init__(self, settings: Settings) -> None:
        assert settings.llm_base_url is not None
        self.model = settings.llm_model
        self.forward_priority = settings.llm_forward_priority
        self.base_url, query = openai_base_url(settings.llm_base_url)
        # Every configured secret: a provider may echo any header or URL back.
        self._secrets = settings_secrets(settings)
        # Several clients, each with its own connection pool: the HTTP pool walks all
        # of its connections on every request (expiry checks), so one pool of 64
        # keep-alive connections cost the worker more CPU per job than the rest of
        # its work together. A request goes to the client with the fewest in flight.
        self.clients = [
            openai.AsyncOpenAI(
                base_url=self.base_url,
                default_query=query or None,
                # The SDK insists on a key; vLLM without --api-key ignores it.
                api_key=settings.llm_api_key or "not-needed",
                timeout=settings.llm_timeout,
                max_retries=0,
            )
            for _ in range(client_shards(settings))
        ]
        self._in_flight = [0] * len(self.clients)
        self._chat_url = join_url(self.base_url, "chat/completions")

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

    async def handle(self, job: Job, ctx: HandlerContext) -> dict[str, Any]:
        request = chat_request(job.input)
        gate = ctx.gate(PROVIDER)
        if not gate.acquire():
            raise gate.refusal(PROVIDER)  # the circuit is open: not sent, no attempt spent
        started = time.perf_counter()
        failure: JobFailure | None = None
        try:
            try:
                # `post` with a plain body and `cast_to=object`: the same SDK request path
                # (auth, timeouts, typed errors) without re-validating our already-checked
                # arguments or building response models, about 1 ms of CPU per job.
                body = {"model": self.model, **request}
                if self.forward_priority:
                    # vLLM started with --scheduling-policy priority serves lower values
                    # first; our highest priority is claimed first.
                    body["priority"] = -job.priority
                shard = min(range(len(self.clients)), key=self._in_flight.__getitem__)
                self._in_flight[shard] += 1
                try:
                    # The request continues the job's trace (its own client span).
                    with tracing.provider_span("POST", self._chat_url) as headers:
                        try:
                            completion = await self.clients[shard].post(
                                "/chat/completions",
                                body=body,
                                cast_to=object,
                                options={"headers": headers},
                            )
                        except openai.APIStatusError as exc:
                            tracing.status_code(exc.status_code)
                            raise
                        tracing.status_code(200)
                finally:
                    self._in_flight[shard] -= 1
            except openai.APIStatusError as exc:
                failure = self._status_failure(exc)
            except openai.APITimeoutError as exc:
                # A connect timeout is a server that is not there (a restart, a dead
                # host); a read timeout is a slow answer.
                # (The SDK bundles its own copy of httpx: matched by name.)
                if type(exc.__cause__).__name__ == "ConnectTimeout":
                    failure = self._unreachable(exc)
                else:
                    failure = JobFailure(
                        ErrorCategory.TIMEOUT,
                        f"llm: no answer within {ctx.settings.llm_timeout:g}s",
                    )
            except openai.APIConnectionError as exc:  # refused, reset, DNS
                failure = self._unreachable(exc)
            except (openai.APIError, ValueError) as exc:  # e.g. a 2xx body that is not JSON
                failure = JobFailure(
                    ErrorCategory.PROVIDER_ERROR,
                    f"llm: malformed response: {redact_text(str(exc), self._secrets)[:200]}",
                    retryable=False,
                )
            failure = await settle(gate, failure)
        finally:
            gate.release()
        if failure is not None:
            raise failure
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        return self._result(completion, duration_ms)

    def _unreachable(self, exc: openai.APIConnectionError) -> JobFailure:
        return JobFailure(
            ErrorCategory.PROVIDER_UNAVAILABLE,
            f"llm: cannot reach {redact_url(self.base_url)}: "
            f"{redact_text(str(exc.__cause__ or exc), self._secrets)[:200]}",
            details={"provider": PROVIDER},
        )

    def _status_failure(self, exc: openai.APIStatusError) -> JobFailure:
        status = exc.status_code
        category = (
            ErrorCategory.INVALID_INPUT
            if status == 400
            else http_errors.category_for_status(status)
        )
        said = _error_message(exc.body) or exc.response.text.strip()
        # Masked before the final cut (a cut through a secret would leave a piece
        # unmasked); the first cut is far enough out never to show.
        said = redact_text(said[:1200], self._secrets)[:300]
        message = f"llm: HTTP {status}" + (f": {said}" if said else "")
        details: dict[str, Any] = {"provider": PROVIDER, "status_code": status}
        retry_after = http_errors.retry_after(exc.response.headers.get("retry-after"))
        if retry_after is not None and status in (429, 503):
            details["retry_after"] = retry_after
        return JobFailure(category, message, details=details)

    def _result(self, completion: Any, duration_ms: float) -> dict[str, Any]:
        try:
            choice = completion["choices"][0]
            content = choice["message"].get("content")
            finish_reason = choice.get("finish_reason")
        except (AttributeError, IndexError, KeyError, TypeError):
            raise JobFailure(
                ErrorCategory.PROVIDER_ERROR,
                "llm: malformed response: no choices[0].message",
                retryable=False,
            ) from None
        if content is not None and not isinstance(content, str):
            raise JobFailure(
                ErrorCategory.PROVIDER_ERROR,
                "llm: malformed response: message content is not text",
                retryable=False,
            )
        return {
            "content": content,
            "model": completion.get("model") or self.model,
            "usage": _usage(completion.get("usage")),
            "finish_reason": finish_reason,
            "duration_ms": duration_ms,
        }


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    # completion_tokens may be null on some vLLM versions: keep what is there.
    return {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
    }


def _error_message(body: object) -> str | None:
    # The SDK passes the inner `error` object (current vLLM/OpenAI) or the whole
    # flat body (older vLLM: {"object": "error", "message": ...}); both carry message.
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body:
        return body
    return None


def spec(settings: Settings) -> HandlerSpec:
    """The LLM handler, disabled (with the reason) when `LLM_BASE_URL` is unset."""
    if not settings.llm_base_url:
        return HandlerSpec(
            name="llm",
            task_types=TASK_TYPES,
            model_profiles=frozenset({settings.llm_model}),
            handle=_disabled,
            enabled=False,
            disabled_reason="LLM_BASE_URL is not set",
        )
    handler = LLMHandler(settings)
    return HandlerSpec(
        name="llm",
        task_types=TASK_TYPES,
        model_profiles=frozenset({settings.llm_model}),
        handle=handler.handle,
        close=handler.close,
        providers={"llm": redact_url(settings.llm_base_url), "model": settings.llm_model},
        endpoints=(PROVIDER,),
        # One provider call of at most LLM_TIMEOUT, and a margin for the rest.
        timeout=settings.llm_timeout + 60,
    )


async def _disabled(job: Job, ctx: HandlerContext) -> dict[str, Any]:
    raise JobFailure(ErrorCategory.INTERNAL, "the LLM handler is disabled", retryable=True)
