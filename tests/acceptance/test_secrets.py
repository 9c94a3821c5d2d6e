"""No configured secret reaches a response, a log line or a job error, in any encoding.

The API, a worker and the sidecar run as real processes (JSON logs to files)
with every secret-bearing variable set. Every AI server, the sidecar target
and the audio host are one `EchoServer` that rejects each request with an
error quoting its `Authorization` header and full URL back, the worst case
for error texts. Jobs fail through every provider, the status endpoints
report every failure, and then each secret value, its percent-encodings, its
base64 forms (and for `user:password` the base64 of the pair, as a `Basic`
header carries it) are looked for in every answer, log line and job error.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import httpx

from tests.helpers import job_body
from tests.processes import ServiceGroup, ServiceProcess
from tests.stubs import sine_wav
from tests.stubs.echo_server import EchoServer

# Characters that URL-encoding changes (/ + = @ :) make the encoded forms differ.
SERVICE_TOKEN = "svc/Tok+en=0001"
LLM_KEY = "sk-llm/Key+0002"
QWEN_KEY = "sk-qwen/Key+0003"
VOXTRAL_KEY = "sk-vox/Key+0004"
AUDIO_LLM_KEY = "sk-audio/Key+0005"
INFRA_TOKEN = "infra/Tok+en=0006"
SIDECAR_TOKEN = "side/Tok+en=0007"
DB_PASSWORD = "db/Pass+word@0008"
LLM_JWT = "eyJhbGci.llm/jwt+0009"
WX_PASSWORD = "wx/Pass+word:0010"
WX_QUERY = "wx-query/Tok+0011"
QWEN_SIG = "qwen-sig/0012+x"
VOXTRAL_QUERY = "vox-query/0013+x"
INFRA_PASSWORD = "infra/Pass+0014"
INFRA_QUERY = "infra-query/0015+x"
METRICS_PASSWORD = "vm/Pass+0016"
METRICS_QUERY = "vm-query/0017+x"
# The caller's own credentials in a presigned audio URL: never in logs or job errors.
AMZ_CREDENTIAL = "AKIAEXAMPLE0018/20240101/us-east-1/s3/aws4_request"
AMZ_SIGNATURE = "a1b2c3d4e5f60019"
JOB_JWT = "eyJjb2JqLmp3dA.job/jwt+0020"
DOWNLOAD_PASSWORD = "dl/Pass+0021"
# The signing key of completion webhooks (its base64 part is the key's text), and the
# caller's token in its callback URL's query.
WEBHOOK_KEY = base64.b64encode(b"webhook-signing-key/0022+xyz??").decode()
WEBHOOK_SECRET = "whsec_" + WEBHOOK_KEY
HOOK_TOKEN = "hook-query/Tok+0023"

CONFIGURED = [
    SERVICE_TOKEN, LLM_KEY, QWEN_KEY, VOXTRAL_KEY, AUDIO_LLM_KEY, INFRA_TOKEN, SIDECAR_TOKEN,
    DB_PASSWORD, LLM_JWT, WX_PASSWORD, WX_QUERY, QWEN_SIG, VOXTRAL_QUERY, INFRA_PASSWORD,
    INFRA_QUERY, METRICS_PASSWORD, METRICS_QUERY, WEBHOOK_SECRET, WEBHOOK_KEY,
]  # fmt: skip
PAIRS = [("wxuser", WX_PASSWORD), ("side", INFRA_PASSWORD), ("vm", METRICS_PASSWORD)]
CALLER = [AMZ_CREDENTIAL, AMZ_SIGNATURE, JOB_JWT, DOWNLOAD_PASSWORD, HOOK_TOKEN]


def q(value: str) -> str:
    return quote(value, safe="")


def forms(secret: str) -> set[str]:
    """The secret and the encodings it takes in URLs and headers."""
    raw = secret.encode()
    return {
        secret,
        q(secret),
        quote(secret),
        quote_plus(secret),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
    }


def leaks(text: str, secrets: list[str], pairs: Sequence[tuple[str, str]] = ()) -> list[str]:
    found = [form for secret in secrets for form in forms(secret) if form in text]
    for user, password in pairs:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        if basic in text:
            found.append(f"Basic {basic}")
    return found


def with_password(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{q(password)}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def finished_job(api: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    for _ in range(400):
        job: dict[str, Any] = (await api.get(f"/api/v1/jobs/{job_id}")).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def test_no_secret_in_any_response_log_line_or_job_error(
    tmp_path: Path, database_url: str
) -> None:
    with EchoServer(status=401) as echo:
        base = echo.base_url
        group_env = {
            "AI_SERVICE_TOKEN": SERVICE_TOKEN,
            "LLM_BASE_URL": f"{base}/v1?jwt={q(LLM_JWT)}",
            "LLM_API_KEY": LLM_KEY,
            "TRANSCRIPTION_PROVIDERS": "whisperx,qwen2-audio,voxtral-small",
            "WHISPERX_URL": with_password(f"{base}/?token={q(WX_QUERY)}", "wxuser", WX_PASSWORD),
            "QWEN_AUDIO_BASE_URL": f"{base}/v1?sig={q(QWEN_SIG)}",
            "QWEN_AUDIO_API_KEY": QWEN_KEY,
            "VOXTRAL_BASE_URL": f"{base}?api_key={q(VOXTRAL_QUERY)}",
            "AUDIO_LLM_API_KEY": AUDIO_LLM_KEY,
            "INFRA_STATUS_URL": with_password(
                f"{base}/?k={q(INFRA_QUERY)}", "side", INFRA_PASSWORD
            ),
            "INFRA_STATUS_TOKEN": INFRA_TOKEN,
            "SIDECAR_TOKEN": SIDECAR_TOKEN,
            "VLLM_METRICS_URLS": with_password(
                f"{base}/?auth={q(METRICS_QUERY)}", "vm", METRICS_PASSWORD
            ),
            "DOCKER_SOCKET": str(tmp_path / "no-docker.sock"),
            "AUDIO_URL_ALLOW": "127.0.0.1",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_URL_ALLOW": "127.0.0.1",
            "PROVIDER_PROBE_TIMEOUT": "2s",
            "LOG_LEVEL": "debug",
        }
        # A password the trust-auth test server ignores, unless the URL has one already.
        db_url = database_url
        if not urlsplit(db_url).password:
            db_url = with_password(db_url, urlsplit(db_url).username or "postgres", DB_PASSWORD)
        async with ServiceGroup(tmp_path, db_url, **group_env) as services:
            # The worker has no VOXTRAL_API_KEY: Voxtral gets AUDIO_LLM_API_KEY from it.
            api_process, worker_process, sidecar_process = await asyncio.gather(
                services.start("api", "api", VOXTRAL_API_KEY=VOXTRAL_KEY),
                services.start("worker", "worker"),
                services.start("sidecar", "sidecar"),
            )
            texts, job_texts = await exercise(api_process, worker_process, sidecar_process, base)
            logs = {p.name: p.log() for p in services.processes}

    authorizations = {headers.get("authorization", "") for _, _, headers in echo.seen}
    sent = {
        f"Bearer {LLM_KEY}",
        f"Bearer {QWEN_KEY}",
        f"Bearer {VOXTRAL_KEY}",
        f"Bearer {AUDIO_LLM_KEY}",
        f"Bearer {INFRA_TOKEN}",
        "Basic " + base64.b64encode(f"wxuser:{WX_PASSWORD}".encode()).decode(),
        "Basic " + base64.b64encode(f"vm:{METRICS_PASSWORD}".encode()).decode(),
    }
    assert sent <= authorizations, "every credential was sent, and echoed back"
    assert any(JOB_JWT in url or q(JOB_JWT) in url for _, url, _ in echo.seen)

    for name, text in [*texts.items(), *logs.items()]:
        assert not leaks(text, CONFIGURED, PAIRS), (name, leaks(text, CONFIGURED, PAIRS))
    for name, text in [*job_texts.items(), *logs.items()]:
        assert not leaks(text, CALLER), (name, leaks(text, CALLER))
    # The echoes did arrive, masked.
    assert "authorization=Bearer ***" in texts["llm job"]
    assert "authorization=Basic ***" in texts["transcription job"]
    assert "provider llm at" in logs["api"]
    assert "attempt 1 failed (provider_auth)" in logs["worker"]


async def exercise(
    api_process: ServiceProcess,
    worker_process: ServiceProcess,
    sidecar_process: ServiceProcess,
    base: str,
) -> tuple[dict[str, str], dict[str, str]]:
    """Drive every path that can show a secret; returns the texts seen, by name."""
    audio = base64.b64encode(sine_wav(1.0)).decode()
    audio_url = with_password(
        f"{base}/calls/1.wav?X-Amz-Credential={q(AMZ_CREDENTIAL)}"
        f"&X-Amz-Signature={AMZ_SIGNATURE}&jwt={q(JOB_JWT)}",
        "me",
        DOWNLOAD_PASSWORD,
    )
    texts: dict[str, str] = {}
    job_texts: dict[str, str] = {}
    auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    async with httpx.AsyncClient(base_url=api_process.base_url, headers=auth, timeout=30) as api:
        bodies = {
            "llm job": job_body(owner_ref="llm"),
            "transcription job": job_body(
                owner_ref="b64",
                task_type="transcription",
                input={"audio_base64": audio, "audio_format": "wav"},
            ),
            "audio_url job": job_body(
                owner_ref="url", task_type="transcription", input={"audio_url": audio_url}
            ),
        }
        for name, body in bodies.items():
            created = await api.post("/api/v1/jobs", json=body)
            assert created.status_code == 201, created.text
            job = await finished_job(api, created.json()["id"])
            assert job["status"] == "failed", job
            texts[name] = json.dumps(job)
            job_texts[name] = json.dumps(
                {k: job[k] for k in ("error_message", "errors", "error_category")}
            )
        # A webhook to the echo, which answers 401 quoting its URL (the caller's token)
        # back: the attempt is recorded with that answer's excerpt, masked.
        hooked = await api.post(
            "/api/v1/jobs",
            json=job_body(owner_ref="hook", callback_url=f"{base}/hooks?token={q(HOOK_TOKEN)}"),
        )
        assert hooked.status_code == 201, hooked.text
        hook_id = hooked.json()["id"]
        assert (await api.post(f"/api/v1/jobs/{hook_id}/cancel")).status_code == 200
        for _ in range(300):
            found = (await api.get(f"/api/v1/jobs/{hook_id}/deliveries")).json()["deliveries"]
            if found and found[0]["attempts"]:
                break
            await asyncio.sleep(0.05)
        assert found[0]["attempt_log"][0]["http_status"] == 401, found
        texts["webhook deliveries"] = job_texts["webhook deliveries"] = json.dumps(found)
        texts["webhook job"] = job_texts["webhook job"] = (
            await api.get(f"/api/v1/jobs/{hook_id}")
        ).text
        for path in (
            "/api/v1/providers/status",
            "/api/v1/infra/status",
            "/api/v1/jobs?limit=50",
            "/api/v1/stats",
            "/api/v1/workers",
            "/metrics",
            "/readyz",
            "/openapi.json",
        ):
            texts[f"api {path}"] = (await api.get(path)).text
        # The worker's registry row: its breakers' URLs are every provider's (with their
        # credentials, removed) and their errors quote the echoes.
        listed = (await api.get("/api/v1/workers")).json()["workers"]
        assert [w["state"] for w in listed] == ["running"], listed
        assert {b["provider"] for b in listed[0]["breakers"]} >= {"llm", "whisperx#1"}
        texts["api wrong token"] = (
            await api.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong"})
        ).text
    async with httpx.AsyncClient(base_url=worker_process.base_url, timeout=30) as worker:
        for path in ("/worker/status", "/metrics", "/readyz"):
            texts[f"worker {path}"] = (await worker.get(path)).text
    async with httpx.AsyncClient(base_url=sidecar_process.base_url, timeout=30) as sidecar:
        ok = await sidecar.get("/status", headers={"Authorization": f"Bearer {SIDECAR_TOKEN}"})
        assert ok.status_code == 200, ok.text
        texts["sidecar /status"] = ok.text
        texts["sidecar wrong token"] = (
            await sidecar.get("/status", headers={"Authorization": "Bearer wrong"})
        ).text
    return texts, job_texts
