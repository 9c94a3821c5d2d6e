"""FastAPI dependencies: the process resources held in `app.state`, and auth."""

from __future__ import annotations

import hmac
from typing import Annotated

import httpx
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ai_service import errors
from ai_service.config import Settings
from ai_service.metrics import Metrics
from ai_service.notifier import JobNotifier
from ai_service.store import Store

_bearer = HTTPBearer(auto_error=False, description="AI_SERVICE_TOKEN, when configured")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_notifier(request: Request) -> JobNotifier | None:
    notifier: JobNotifier | None = request.app.state.notifier
    return notifier


def get_http(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.http
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
NotifierDep = Annotated[JobNotifier | None, Depends(get_notifier)]
HttpDep = Annotated[httpx.AsyncClient, Depends(get_http)]


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Enforce `Authorization: Bearer <AI_SERVICE_TOKEN>` when a token is configured."""
    expected = settings.ai_service_token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise errors.Unauthorized("missing or wrong bearer token")
