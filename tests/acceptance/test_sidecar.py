"""The sidecar served on loopback: auth, every section, missing sources, no secrets.

Sources are real servers: vLLM and WhisperX stubs on 127.0.0.1, a fake Docker
Engine speaking HTTP on a unix socket in a temporary directory. NVML is a fake
`pynvml` module (or the real one made to fail as on a machine without a GPU).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pynvml
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ai_service.sidecar.app import create_app
from tests.helpers import make_settings, serve
from tests.stubs import FileServer, closed_port_url
from tests.stubs.vllm_metrics_server import EXPECTED, VllmStub
from tests.stubs.whisperx_server import WhisperXStub, start_transcription
from tests.unit.test_sidecar_gpu import FakeGpu, FakeNvml

TOKEN = "sidecar-token-0001"


@asynccontextmanager
async def sidecar(nvml: Any | None = None, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    """The sidecar app on an ephemeral loopback port and a client for it."""
    env.setdefault("DOCKER_SOCKET", "/nonexistent/docker.sock")
    env.setdefault("PROVIDER_PROBE_TIMEOUT", "2s")
    app = create_app(make_settings(**env), nvml=nvml)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=15) as client:
        yield client


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real pynvml, failing as it does on a machine without an NVIDIA driver."""

    def init() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", init)


# -- a fake Docker Engine on a unix socket --------------------------------------

CONTAINERS = [
    {
        "Id": "a" * 64,
        "Names": ["/ai-server-vllm-1"],
        "Image": "vllm/vllm-openai:v0.10.2",
        "State": "running",
        "Status": "Up 3 hours (healthy)",
        "Labels": {"com.docker.compose.service": "vllm"},
    },
    {
        "Id": "b" * 64,
        "Names": ["/ai-server-whisperx-1-1"],
        "Image": "onerahmet/openai-whisper-asr-webservice:latest-gpu",
        "State": "running",
        "Status": "Up 10 seconds (health: starting)",
        "Labels": {"com.docker.compose.service": "whisperx-1"},
    },
    {
        "Id": "c" * 64,
        "Names": ["/one-off"],
        "Image": "busybox",
        "State": "exited",
        "Status": "Exited (0) 2 days ago",
        "Labels": {},
    },
    {
        "Id": "d" * 64,
        "Names": ["/vanished"],
        "Image": "busybox",
        "State": "running",
        "Status": "Up 1 second",
        "Labels": {},
    },
]
HEALTH = {"a" * 64: "healthy", "b" * 64: "starting"}


class FakeDocker:
    """Docker Engine API: the container list and inspection, GET only."""

    def __init__(self, list_status: int = 200) -> None:
        self.list_status = list_status
        self.list_queries: list[dict[str, str]] = []
        self.methods: set[str] = set()

    def app(self) -> Starlette:
        async def containers(request: Request) -> Response:
            self.methods.add(request.method)
            self.list_queries.append(dict(request.query_params))
            if self.list_status != 200:
                return JSONResponse({"message": "daemon error"}, status_code=self.list_status)
            show_all = request.query_params.get("all") in ("1", "true")
            listed = [c for c in CONTAINERS if show_all or c["State"] == "running"]
            return JSONResponse(listed)

        async def inspect(request: Request) -> Response:
            self.methods.add(request.method)
            container_id = request.path_params["id"]
            if container_id == "d" * 64:
                return JSONResponse({"message": "No such container"}, status_code=404)
            state: dict[str, Any] = {"Status": "running", "Running": True}
            if container_id in HEALTH:
                state["Health"] = {"Status": HEALTH[container_id], "FailingStreak": 0, "Log": []}
            return JSONResponse({"Id": container_id, "State": state})

        return Starlette(
            routes=[
                Route("/containers/json", containers, methods=["GET"]),
                Route("/containers/{id}/json", inspect, methods=["GET"]),
            ]
        )


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short path: unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="dk", dir="/tmp") as path:
        yield Path(path)


@asynccontextmanager
async def serve_unix(app: Starlette, path: Path) -> AsyncIterator[None]:
    """Serve `app` over HTTP on the unix socket `path`."""
    config = uvicorn.Config(
        app, uds=str(path), log_config=None, log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("fake Docker exited before starting")
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


# -- tests --------------------------------------------------------------------------


async def test_healthz_is_open_even_with_a_token() -> None:
    async with sidecar(SIDECAR_TOKEN=TOKEN) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
async def test_status_without_the_right_token_is_401_with_the_envelope(
    headers: dict[str, str], no_nvml: None
) -> None:
    async with sidecar(SIDECAR_TOKEN=TOKEN) as client:
        response = await client.get("/status", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_status_is_open_when_no_token_is_configured(no_nvml: None) -> None:
    async with sidecar() as client:
        response = await client.get("/status")
    assert response.status_code == 200


async def test_without_nvml_docker_or_urls_every_section_is_unavailable_and_status_is_200(
    no_nvml: None,
) -> None:
    async with sidecar(SIDECAR_TOKEN=TOKEN) as client:
        response = await client.get("/status", headers=auth())
    assert response.status_code == 200
    body = response.json()
    assert body["gpu"] == {
        "available": False,
        "reason": "NVML is not available: NVML Shared Library Not Found",
        "driver_version": None,
        "gpus": [],
    }
    assert body["containers"]["available"] is False
    assert "/nonexistent/docker.sock" in body["containers"]["reason"]
    assert body["vllm"] == {
        "available": False,
        "reason": "VLLM_METRICS_URLS is not set",
        "instances": [],
    }
    assert body["whisperx"] == {
        "available": False,
        "reason": "WHISPERX_URL is not set",
        "instances": [],
    }
    assert body["collected_at"]


async def test_gpu_section_reports_each_gpu_with_unsupported_readings_null() -> None:
    fake = FakeNvml([FakeGpu(), FakeGpu(unsupported={"power"})])
    async with sidecar(nvml=fake.module()) as client:
        gpu = (await client.get("/status")).json()["gpu"]
    assert gpu["available"] is True
    assert gpu["driver_version"] == "550.54.15"
    assert [g["index"] for g in gpu["gpus"]] == [0, 1]
    assert gpu["gpus"][0]["power_watts"] == 312.5
    assert gpu["gpus"][1]["power_watts"] is None
    assert gpu["gpus"][1]["memory_used_bytes"] == 30 * 2**30
    assert gpu["gpus"][1]["temperature_c"] == 55.0


async def test_vllm_section_reads_both_metric_generations_and_reports_a_dead_server(
    no_nvml: None,
) -> None:
    with (
        VllmStub(variant="current") as current,
        VllmStub(models=["Qwen/Qwen2-Audio-7B-Instruct"], variant="legacy") as legacy,
    ):
        dead = closed_port_url()
        urls = f"{current.base_url}/metrics,{legacy.base_url},{dead}/metrics"
        async with sidecar(VLLM_METRICS_URLS=urls) as client:
            vllm = (await client.get("/status")).json()["vllm"]
    assert vllm["available"] is True
    first, second, third = vllm["instances"]
    assert first["url"] == f"{current.base_url}/metrics"
    assert first["models"] == ["qwen2.5-14b"]
    assert second["models"] == ["Qwen/Qwen2-Audio-7B-Instruct"]
    for instance in (first, second):
        assert instance["ok"] is True
        for key, value in EXPECTED.items():
            assert instance[key] == pytest.approx(value), key
    assert third["ok"] is False
    assert third["error"].startswith("connection failed")
    assert third["requests_running"] is None


async def test_vllm_section_is_unavailable_when_no_server_can_be_read(no_nvml: None) -> None:
    with VllmStub(metrics_status=500) as broken, VllmStub(metrics_body="garbage {{{") as garbage:
        urls = f"{broken.base_url}/metrics,{garbage.base_url}/metrics"
        async with sidecar(VLLM_METRICS_URLS=urls) as client:
            response = await client.get("/status")
    assert response.status_code == 200
    vllm = response.json()["vllm"]
    assert vllm["available"] is False
    assert vllm["reason"] == "no vLLM metrics endpoint could be read"
    assert [i["error"] for i in vllm["instances"]] == [
        "GET /metrics answered HTTP 500",
        "not Prometheus text format: ValueError",
    ]


async def test_whisperx_section_probes_docs_then_health(no_nvml: None) -> None:
    with WhisperXStub("wx-a") as webservice, FileServer() as health_only:
        health_only.add("/health", b'{"status": "ok"}', content_type="application/json")
        dead = closed_port_url()
        urls = f"{webservice.base_url},{health_only.base_url},{dead}"
        async with sidecar(WHISPERX_URL=urls) as client:
            whisperx = (await client.get("/status")).json()["whisperx"]
    assert whisperx["available"] is True
    first, second, third = whisperx["instances"]
    assert (first["reachable"], first["detail"]) == (True, "reachable (GET /docs answered 200)")
    assert (second["reachable"], second["detail"]) == (True, "reachable (GET /health answered 200)")
    assert third["reachable"] is False
    assert third["detail"].startswith("connection failed")
    assert health_only.hits["/docs"] == 1  # tried first, answered 404
    assert health_only.hits["/health"] == 1


async def test_a_whisperx_instance_that_is_transcribing_is_reachable_and_busy(
    no_nvml: None,
) -> None:
    with WhisperXStub("busy", latency=30.0) as busy:
        dead = closed_port_url()
        urls = f"{busy.base_url},{dead}"
        async with sidecar(WHISPERX_URL=urls, PROVIDER_PROBE_TIMEOUT="0.5s") as client:
            transcribing = await start_transcription(busy)
            whisperx = (await client.get("/status")).json()["whisperx"]
            assert busy.busy  # still transcribing: the probe got no answer
            busy.stop()
            await asyncio.gather(transcribing, return_exceptions=True)
    working, down = whisperx["instances"]
    assert (working["reachable"], working["busy"]) == (True, True)
    assert working["detail"].startswith("busy: connected, but GET /docs did not answer")
    assert (down["reachable"], down["busy"]) == (False, False)
    assert down["detail"].startswith("connection failed")


async def test_containers_section_lists_all_containers_with_health(
    socket_dir: Path, no_nvml: None
) -> None:
    docker = FakeDocker()
    path = socket_dir / "docker.sock"
    async with serve_unix(docker.app(), path), sidecar(DOCKER_SOCKET=str(path)) as client:
        section = (await client.get("/status")).json()["containers"]
    assert section["available"] is True
    assert docker.list_queries == [{"all": "true"}]
    assert docker.methods == {"GET"}
    by_name = {c["name"]: c for c in section["containers"]}
    assert sorted(by_name) == ["ai-server-vllm-1", "ai-server-whisperx-1-1", "one-off", "vanished"]
    assert by_name["ai-server-vllm-1"] == {
        "id": "a" * 12,
        "name": "ai-server-vllm-1",
        "image": "vllm/vllm-openai:v0.10.2",
        "status": "running",
        "status_text": "Up 3 hours (healthy)",
        "health": "healthy",
        "compose_service": "vllm",
    }
    assert by_name["ai-server-whisperx-1-1"]["health"] == "starting"
    assert (by_name["one-off"]["status"], by_name["one-off"]["health"]) == ("exited", None)
    assert by_name["vanished"]["health"] is None  # removed between list and inspection


async def test_containers_section_is_unavailable_when_docker_answers_an_error(
    socket_dir: Path, no_nvml: None
) -> None:
    path = socket_dir / "docker.sock"
    async with (
        serve_unix(FakeDocker(list_status=500).app(), path),
        sidecar(DOCKER_SOCKET=str(path)) as client,
    ):
        response = await client.get("/status")
    assert response.status_code == 200
    assert response.json()["containers"] == {
        "available": False,
        "reason": "Docker answered HTTP 500 to the container list",
        "containers": [],
    }


async def test_a_collector_that_crashes_only_marks_its_section_unavailable() -> None:
    class Broken:
        NVMLError = RuntimeError

        def nvmlInit(self) -> None:
            raise ZeroDivisionError("not an NVML error")

    async with sidecar(nvml=Broken()) as client:
        response = await client.get("/status")
    assert response.status_code == 200
    assert response.json()["gpu"] == {
        "available": False,
        "reason": "collector failed: ZeroDivisionError",
        "driver_version": None,
        "gpus": [],
    }


SECRETS = ("metricsuser", "metrics-pw-111", "metrics-q-222", "wxuser", "wx-pw-444", "wx-q-555")


async def test_status_and_logs_never_show_secrets_from_urls_or_the_token(
    no_nvml: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ai_service")
    with VllmStub() as vllm, WhisperXStub("wx") as wx:
        dead = closed_port_url().removeprefix("http://")
        metrics = [
            f"http://metricsuser:metrics-pw-111@{vllm.base_url.removeprefix('http://')}"
            "/metrics?api_key=metrics-q-222",
            f"http://metricsuser:metrics-pw-111@{dead}/metrics?api_key=metrics-q-222",
        ]
        whisperx = [
            f"http://wxuser:wx-pw-444@{wx.base_url.removeprefix('http://')}/?token=wx-q-555",
            f"http://wxuser:wx-pw-444@{dead}/?token=wx-q-555",
        ]
        async with sidecar(
            SIDECAR_TOKEN=TOKEN,
            VLLM_METRICS_URLS=",".join(metrics),
            WHISPERX_URL=",".join(whisperx),
        ) as client:
            response = await client.get("/status", headers=auth())
            denied = await client.get("/status", headers=auth("bad"))
    body = response.json()
    # The sources were really read through the secret-bearing URLs.
    assert [i["ok"] for i in body["vllm"]["instances"]] == [True, False]
    assert [i["reachable"] for i in body["whisperx"]["instances"]] == [True, False]
    assert body["vllm"]["instances"][0]["url"].endswith("/metrics?api_key=%2A%2A%2A")
    for text in (response.text, denied.text, caplog.text):
        for secret in (*SECRETS, TOKEN):
            assert secret not in text


async def test_openapi_documents_the_status_document() -> None:
    async with sidecar() as client:
        spec = (await client.get("/openapi.json")).json()
    assert set(spec["paths"]) == {"/healthz", "/status"}
    schemas = spec["components"]["schemas"]
    for name in ("SidecarStatus", "GpuSection", "ContainersSection", "VllmSection"):
        assert name in schemas
