"""`GET /api/v1/infra/status`: the API reading a real sidecar served on loopback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import pytest

from ai_service.sidecar.app import create_app as create_sidecar
from tests.conftest import ApiFactory
from tests.helpers import make_settings, serve
from tests.stubs import FileServer, closed_port_url
from tests.stubs.vllm_metrics_server import VllmStub
from tests.unit.test_sidecar_gpu import FakeGpu, FakeNvml

SIDECAR_TOKEN = "sidecar-token-7777"


@asynccontextmanager
async def running_sidecar(**env: str) -> AsyncIterator[str]:
    """A real sidecar (fake NVML, no Docker) on loopback; yields its base URL."""
    env.setdefault("DOCKER_SOCKET", "/nonexistent/docker.sock")
    env.setdefault("PROVIDER_PROBE_TIMEOUT", "2s")
    app = create_sidecar(make_settings(**env), nvml=FakeNvml([FakeGpu()]).module())
    async with serve(app) as base_url:
        yield base_url


async def test_unconfigured_answers_configured_false_only(api_factory: ApiFactory) -> None:
    async with api_factory() as api:
        response = await api.get("/api/v1/infra/status")
    assert response.status_code == 200
    assert response.json() == {"configured": False}


@pytest.mark.parametrize("path", ["/status", "", "/"])
async def test_configured_returns_the_sidecar_sections_and_fetched_at(
    api_factory: ApiFactory, path: str
) -> None:
    with VllmStub() as vllm:
        async with (
            running_sidecar(
                SIDECAR_TOKEN=SIDECAR_TOKEN, VLLM_METRICS_URLS=f"{vllm.base_url}/metrics"
            ) as sidecar_url,
            api_factory(
                INFRA_STATUS_URL=sidecar_url + path, INFRA_STATUS_TOKEN=SIDECAR_TOKEN
            ) as api,
        ):
            response = await api.get("/api/v1/infra/status")
    assert response.status_code == 200
    body = response.json()
    assert body["configured"] is True
    assert datetime.fromisoformat(body["fetched_at"]).tzinfo is not None
    assert body["url"] == sidecar_url + path
    assert body["gpu"]["available"] is True
    assert body["gpu"]["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert body["vllm"]["available"] is True
    assert body["vllm"]["instances"][0]["requests_running"] == 3
    assert body["containers"]["available"] is False
    assert body["containers"]["reason"]
    assert body["whisperx"] == {
        "available": False,
        "reason": "WHISPERX_URL is not set",
        "instances": [],
    }
    assert body["collected_at"]


async def test_null_readings_stay_null_in_the_passed_through_sections(
    api_factory: ApiFactory,
) -> None:
    nvml = FakeNvml([FakeGpu(unsupported={"power", "temperature"})]).module()
    app = create_sidecar(make_settings(DOCKER_SOCKET="/nonexistent"), nvml=nvml)
    async with serve(app) as sidecar_url, api_factory(INFRA_STATUS_URL=sidecar_url) as api:
        gpu = (await api.get("/api/v1/infra/status")).json()["gpu"]["gpus"][0]
    assert gpu["power_watts"] is None
    assert gpu["temperature_c"] is None
    assert gpu["utilization_percent"] == 42.0


async def test_sidecar_down_is_502_with_the_envelope(api_factory: ApiFactory) -> None:
    dead = closed_port_url()
    async with api_factory(INFRA_STATUS_URL=f"{dead}/status", PROVIDER_PROBE_TIMEOUT="1s") as api:
        response = await api.get("/api/v1/infra/status")
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "upstream_unavailable"
    assert body["message"].startswith(f"sidecar at {dead}/status is unreachable: connection failed")
    assert body["details"] == {"url": f"{dead}/status"}


async def test_sidecar_rejecting_the_token_is_502_naming_the_status(
    api_factory: ApiFactory,
) -> None:
    async with (
        running_sidecar(SIDECAR_TOKEN=SIDECAR_TOKEN) as sidecar_url,
        api_factory(INFRA_STATUS_URL=sidecar_url, INFRA_STATUS_TOKEN="not-the-token") as api,
    ):
        response = await api.get("/api/v1/infra/status")
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "upstream_unavailable"
    assert body["message"] == f"sidecar at {sidecar_url} answered HTTP 401"
    assert body["details"]["status"] == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"<html>gateway</html>", 200), (b'{"gpu": "nope"}', 200), (b"oops", 503)],
)
async def test_sidecar_answering_garbage_or_an_error_is_502(
    api_factory: ApiFactory, body: bytes, status: int
) -> None:
    with FileServer() as server:
        url = server.add("/status", body, status=status, content_type="application/json")
        async with api_factory(INFRA_STATUS_URL=url) as api:
            response = await api.get("/api/v1/infra/status")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert "nope" not in response.text  # validation errors quote input: never passed on


async def test_infra_status_requires_the_service_token(api_factory: ApiFactory) -> None:
    async with api_factory(AI_SERVICE_TOKEN="svc-token-1") as api:
        denied = await api.get("/api/v1/infra/status")
        allowed = await api.get(
            "/api/v1/infra/status", headers={"Authorization": "Bearer svc-token-1"}
        )
    assert denied.status_code == 401
    assert allowed.json() == {"configured": False}


SECRETS = ("infrauser", "infra-pw-1234", "infra-q-5678", SIDECAR_TOKEN)


async def test_no_secret_in_answers_or_logs_when_the_url_embeds_credentials(
    api_factory: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ai_service")
    texts: list[str] = []
    async with running_sidecar(SIDECAR_TOKEN=SIDECAR_TOKEN) as sidecar_url:
        hostport = sidecar_url.removeprefix("http://")
        with_query = f"http://{hostport}/status?api_key=infra-q-5678"
        with_userinfo = f"http://infrauser:infra-pw-1234@{hostport}/status?api_key=infra-q-5678"
        dead = closed_port_url().removeprefix("http://")
        down = f"http://infrauser:infra-pw-1234@{dead}/status?api_key=infra-q-5678"
        for url, expected in ((with_query, 200), (with_userinfo, 200), (down, 502)):
            async with api_factory(
                INFRA_STATUS_URL=url, INFRA_STATUS_TOKEN=SIDECAR_TOKEN, PROVIDER_PROBE_TIMEOUT="1s"
            ) as api:
                response = await api.get("/api/v1/infra/status")
            assert response.status_code == expected, response.text
            texts.append(response.text)
    assert "api_key=%2A%2A%2A" in texts[0]
    for text in (*texts, caplog.text):
        for secret in SECRETS:
            assert secret not in text


async def test_openapi_documents_infra_status_and_its_502(api_factory: ApiFactory) -> None:
    async with api_factory() as api:
        spec = (await api.get("/openapi.json")).json()
    operation = spec["paths"]["/api/v1/infra/status"]["get"]
    assert "502" in operation["responses"]
    assert "401" in operation["responses"]
    assert "InfraStatusOut" in spec["components"]["schemas"]
