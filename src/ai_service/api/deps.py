"""FastAPI dependencies: the process resources held in `app.state`, and the caller.

All are `async def`: FastAPI runs plain `def` dependencies in a thread pool,
a thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from fastapi import Depends, Request

from ai_service import errors
from ai_service.api.auth import Principal
from ai_service.api.completions import CompletionBatcher
from ai_service.api.waits import JobWaits
from ai_service.config import Settings
from ai_service.metrics import Metrics
from ai_service.notifier import JobNotifier
from ai_service.store import Store


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_completions(request: Request) -> CompletionBatcher:
    completions: CompletionBatcher = request.app.state.completions
    return completions


async def get_notifier(request: Request) -> JobNotifier | None:
    notifier: JobNotifier | None = request.app.state.notifier
    return notifier


async def get_waits(request: Request) -> JobWaits:
    waits: JobWaits = request.app.state.waits
    return waits


async def get_http(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.http
    return client


async def get_principal(request: Request) -> Principal:
    """The caller identified at the edge (`middleware.EdgeMiddleware`; fails closed without)."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise errors.Forbidden("the caller could not be identified")
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WaitsDep = Annotated[JobWaits, Depends(get_waits)]
CompletionsDep = Annotated[CompletionBatcher, Depends(get_completions)]
NotifierDep = Annotated[JobNotifier | None, Depends(get_notifier)]
HttpDep = Annotated[httpx.AsyncClient, Depends(get_http)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def known_query(*names: str) -> Any:
    """A route dependency refusing query parameters other than `names` (422 naming one).

    A misspelt parameter (`statuses=failed`, `includ=input`) must fail loudly instead
    of being ignored.
    """
    allowed = frozenset(names)

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise errors.InvalidRequest(unknown[0], "is not a query parameter of this endpoint")

    return Depends(check)
