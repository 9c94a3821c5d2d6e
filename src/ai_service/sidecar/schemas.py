"""The sidecar's answers: `/status` (shared with the API's `GET /api/v1/infra/status`), `/healthz`.

Every reading is optional: an unsupported or unreadable value is `null`
rather than a failure. Unknown fields are ignored when the API reads a
sidecar's answer, so a newer sidecar stays readable by an older API.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class GpuReading(BaseModel):
    """One GPU as NVML sees it; a reading NVML cannot give is null."""

    index: int
    name: str | None = None
    utilization_percent: float | None = Field(default=None, description="GPU busy time, 0-100.")
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_watts: float | None = None


class GpuSection(BaseModel):
    """GPUs via NVML."""

    available: bool
    reason: str | None = Field(default=None, description="Why the section is unavailable.")
    driver_version: str | None = None
    gpus: list[GpuReading] = Field(default_factory=list)


class ContainerInfo(BaseModel):
    """One container as the Docker Engine reports it."""

    id: str = Field(description="Short container id (12 characters).")
    name: str
    image: str | None = None
    status: str | None = Field(
        default=None, description="`State`: created, running, restarting, exited, ..."
    )
    status_text: str | None = Field(default=None, description="Docker's `Status`, e.g. `Up 2h`.")
    health: str | None = Field(
        default=None,
        description="`State.Health.Status` (starting, healthy, unhealthy); null without a check.",
    )
    compose_service: str | None = None


class ContainersSection(BaseModel):
    """Containers via the Docker Engine API."""

    available: bool
    reason: str | None = None
    containers: list[ContainerInfo] = Field(default_factory=list)


class VllmInstance(BaseModel):
    """Live figures of one vLLM server, summed (or averaged) over its engines."""

    url: str = Field(description="The metrics URL, credentials removed.")
    ok: bool
    error: str | None = None
    latency_ms: float | None = None
    models: list[str] = Field(default_factory=list, description="`model_name` label values.")
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = Field(
        default=None,
        description="KV-cache usage, 0-1 (`vllm:kv_cache_usage_perc`, older "
        "`vllm:gpu_cache_usage_perc`), averaged over engines.",
    )
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    time_to_first_token_mean_seconds: float | None = None
    e2e_request_latency_mean_seconds: float | None = None
    requests_finished_total: float | None = None


class VllmSection(BaseModel):
    """vLLM servers via their Prometheus `/metrics`."""

    available: bool
    reason: str | None = None
    instances: list[VllmInstance] = Field(default_factory=list)


class WhisperxInstance(BaseModel):
    """Reachability of one WhisperX instance."""

    url: str = Field(description="The instance URL, credentials removed.")
    reachable: bool = Field(description="It answered the probe, or it is busy.")
    busy: bool = Field(
        default=False,
        description="It accepted the connection but answered nothing in time: it is "
        "transcribing (whisper-asr-webservice answers nothing meanwhile), not down.",
    )
    latency_ms: float | None = None
    detail: str


class WhisperxSection(BaseModel):
    """WhisperX instances (`WHISPERX_URL`)."""

    available: bool
    reason: str | None = None
    instances: list[WhisperxInstance] = Field(default_factory=list)


# No docstring: it would become the schema's description in `/openapi.json`,
# which documents the same `{"status": "ok"}` as the API's health answer.
class HealthOut(BaseModel):
    status: str


class SidecarStatus(BaseModel):
    """The sidecar's `GET /status` answer."""

    collected_at: datetime
    gpu: GpuSection
    containers: ContainersSection
    vllm: VllmSection
    whisperx: WhisperxSection
