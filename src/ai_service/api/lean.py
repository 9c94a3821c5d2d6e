"""`/api/v1` endpoints served without FastAPI's per-request machinery.

FastAPI matches a request against the routes (through nested routers, more
than once), builds the dependency graph's values, validates the body and the
answer and wraps them in several layers; for the small calls external
workers make by the thousand (claim, complete, heartbeat) that was most of
the API's CPU. A `LeanEndpoint` calls the same endpoint function with the
same arguments, validated by the route's own FastAPI fields and answered by
the route's own response field, after one lookup in the `RouteTable` that
the edge middleware made anyway.

Only what can be served exactly as FastAPI would serve it is served here:
routes whose parameters are path parameters, at most one JSON body model and
dependencies that take nothing but the `Request` (`api.deps`). A request
with a query string, an empty or non-JSON body, or a body or path parameter
that fails validation goes to FastAPI unchanged (the body replayed), so
every error answer comes from one place (`error_envelope`).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi._compat import ModelField
from fastapi.datastructures import DefaultPlaceholder
from fastapi.exceptions import ResponseValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ai_service import errors
from ai_service.error_envelope import domain_response

# The API's logger, as for the errors FastAPI answers (`api.app` installs the envelope).
log = logging.getLogger("ai_service.api")

Dependency = Callable[[Request], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class LeanEndpoint:
    """One route's endpoint, with what calling it takes, resolved once at start."""

    route: APIRoute
    app: FastAPI  # its `dependency_overrides` send requests to FastAPI
    path_params: tuple[ModelField, ...]
    body: ModelField | None
    dependencies: tuple[tuple[str | None, Dependency], ...]
    request_param: str | None
    response_param: str | None
    status_code: int
    response: ModelField
    exclude_unset: bool

    @classmethod
    def of(cls, route: APIRoute, app: FastAPI) -> LeanEndpoint | None:
        """The lean form of `route`, or None when it needs FastAPI's machinery."""
        dependant = route.dependant
        if (
            dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or len(dependant.body_params) > 1
            or dependant.websocket_param_name
            or dependant.http_connection_param_name
            or dependant.background_tasks_param_name
            or dependant.security_scopes_param_name
            or not inspect.iscoroutinefunction(dependant.call)
            or route.response_field is None
            or not isinstance(route.response_class, DefaultPlaceholder)
            or route.response_model_include is not None
            or route.response_model_exclude is not None
            or route.response_model_exclude_defaults
            or route.response_model_exclude_none
            or not route.response_model_by_alias
        ):
            return None
        body = dependant.body_params[0] if dependant.body_params else None
        if body is not None and (
            route._embed_body_fields
            or not (
                isinstance(body.field_info.annotation, type)
                and issubclass(body.field_info.annotation, BaseModel)
            )
        ):
            return None
        dependencies: list[tuple[str | None, Dependency]] = []
        for sub in dependant.dependencies:
            takes_only_the_request = (
                sub.request_param_name is not None
                and len(inspect.signature(sub.call).parameters) == 1  # type: ignore[arg-type]
                and not sub.dependencies
            )
            if not (takes_only_the_request and inspect.iscoroutinefunction(sub.call)):
                return None
            dependencies.append((sub.name, sub.call))
        return cls(
            route=route,
            app=app,
            path_params=tuple(dependant.path_params),
            body=body,
            dependencies=tuple(dependencies),
            request_param=dependant.request_param_name,
            response_param=dependant.response_param_name,
            status_code=route.status_code or 200,
            response=route.response_field,
            exclude_unset=route.response_model_exclude_unset,
        )

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, params: dict[str, Any], fastapi: ASGIApp
    ) -> None:
        """Serve one request; `fastapi` (the rest of the app) answers whatever is not lean."""
        if scope.get("query_string") or self.app.dependency_overrides:
            await fastapi(scope, receive, send)
            return
        values: dict[str, Any] = {}
        for field in self.path_params:
            value, problems = field.validate(params.get(field.alias), {}, loc=("path",))
            if problems:
                await fastapi(scope, receive, send)
                return
            values[field.name] = value
        scope["path_params"] = params
        request = Request(scope, receive)
        if self.body is not None:
            try:
                raw = await request.body()
            except ClientDisconnect:
                return  # nobody to answer
            try:
                value, problems = self.body.validate(json.loads(raw), {}, loc=("body",))
            except (ValueError, RecursionError):  # empty, not JSON, too deep: FastAPI says so
                problems = [{}]
            if problems:
                await fastapi(scope, _replay(raw, receive), send)
                return
            values[self.body.name] = value
        scope["route"] = self.route
        scope["endpoint"] = self.route.endpoint
        if self.request_param is not None:
            values[self.request_param] = request
        answer = Response() if self.response_param is not None else None
        if answer is not None:
            del answer.headers["content-length"]
            answer.status_code = None  # type: ignore[assignment]
            values[self.response_param] = answer  # type: ignore[index]
        try:
            for name, dependency in self.dependencies:
                value = await dependency(request)
                if name is not None:
                    values[name] = value
            result = await self.route.dependant.call(**values)  # type: ignore[misc]
        except errors.AIServiceError as exc:
            await domain_response(exc, log)(scope, receive, send)
            return
        if isinstance(result, Response):
            await result(scope, receive, send)
            return
        await send_json(send, self._encode(result), self._status(answer), answer)

    def _encode(self, result: Any) -> bytes:
        # As FastAPI: validate against the response model (an instance of it
        # passes as it is) and dump it to JSON in one pass.
        value, problems = self.response.validate(result, {}, loc=("response",))
        if problems:
            raise ResponseValidationError(problems, body=result)
        return self.response.serialize_json(value, exclude_unset=self.exclude_unset)

    def _status(self, answer: Response | None) -> int:
        if answer is not None and answer.status_code:
            return answer.status_code
        return self.status_code


async def send_json(send: Send, body: bytes, status: int, answer: Response | None) -> None:
    """Send a JSON answer (plus the headers an endpoint set on its `Response`)."""
    headers = [
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
    ]
    if answer is not None:
        headers.extend(answer.headers.raw)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that hands out `body` again first (it was read before FastAPI got it)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
