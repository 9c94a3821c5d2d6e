"""Containers through the Docker Engine API on its unix socket.

`GET /containers/json?all=true` lists every container (name, image, state);
the list has no health, so each container is inspected
(`GET /containers/{id}/json`, `State.Health.Status`) concurrently. The
sidecar only reads: it never sends anything but GET to the engine.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ai_service.sidecar.schemas import ContainerInfo, ContainersSection

# Inspections in flight at once (a host may run dozens of containers).
_INSPECT_CONCURRENCY = 8
_COMPOSE_SERVICE_LABEL = "com.docker.compose.service"


async def collect_containers(socket_path: str, timeout: float) -> ContainersSection:
    """The `containers` section; never raises."""
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://docker", timeout=timeout
        ) as client:
            response = await client.get("/containers/json", params={"all": "true"})
            if response.status_code != 200:
                return ContainersSection(
                    available=False,
                    reason=f"Docker answered HTTP {response.status_code} to the container list",
                )
            listed = response.json()
            if not isinstance(listed, list):
                return ContainersSection(
                    available=False, reason="Docker answered an unexpected container list"
                )
            slots = asyncio.Semaphore(_INSPECT_CONCURRENCY)
            containers = await asyncio.gather(
                *(_describe(client, slots, item) for item in listed if isinstance(item, dict))
            )
    except httpx.TimeoutException:
        return ContainersSection(
            available=False, reason=f"Docker did not answer within {timeout:g} s"
        )
    except httpx.HTTPError as exc:
        return ContainersSection(
            available=False, reason=f"cannot talk to Docker at {socket_path}: {exc}"
        )
    except ValueError:
        return ContainersSection(available=False, reason="Docker answered a body that is not JSON")
    containers.sort(key=lambda c: c.name)
    return ContainersSection(available=True, containers=containers)


async def _describe(
    client: httpx.AsyncClient, slots: asyncio.Semaphore, item: dict[str, Any]
) -> ContainerInfo:
    container_id = str(item.get("Id", ""))
    names = item.get("Names") or []
    name = str(names[0]).lstrip("/") if names else container_id[:12]
    labels = item.get("Labels") or {}
    async with slots:
        health = await _health(client, container_id)
    return ContainerInfo(
        id=container_id[:12],
        name=name,
        image=_str_or_none(item.get("Image")),
        status=_str_or_none(item.get("State")),
        status_text=_str_or_none(item.get("Status")),
        health=health,
        compose_service=_str_or_none(labels.get(_COMPOSE_SERVICE_LABEL))
        if isinstance(labels, dict)
        else None,
    )


async def _health(client: httpx.AsyncClient, container_id: str) -> str | None:
    """`State.Health.Status`, or None without a health check (or when it vanished)."""
    if not container_id:
        return None
    try:
        response = await client.get(f"/containers/{container_id}/json")
        if response.status_code != 200:
            return None  # removed between the list and the inspection
        state = response.json().get("State") or {}
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    health = state.get("Health") if isinstance(state, dict) else None
    if isinstance(health, dict) and isinstance(health.get("Status"), str):
        return str(health["Status"])
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
