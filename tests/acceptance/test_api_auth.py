"""Acceptance tests of auth over HTTP: `AI_SERVICE_TOKEN` and the scoped `AI_SERVICE_TOKENS`.

Every `/api/v1/*` route needs `Authorization: Bearer <token>` when a token is
configured; probes, metrics and the OpenAPI document stay open; each role
reaches exactly the routes of its row in `MATRIX`; a submitter is confined to
its owner_service; no token ever shows up in an answer or a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from ai_service.api.app import create_app
from ai_service.config import token_id
from tests.conftest import ApiFactory
from tests.helpers import job_body, make_settings
from tests.processes import START_TIMEOUT, ServiceGroup
from tests.stubs import sine_wav

API = "/api/v1"
TOKEN = f"tok-{uuid.uuid4().hex}"
WRONG = f"wrong-{uuid.uuid4().hex}"
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")
AUDIO = sine_wav(0.2)

# Routes of the seed's API section (plus heartbeat and cancel of one job).
SEED_ROUTES = {
    ("POST", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs/batch"),
    ("POST", "/api/v1/jobs/retry"),
    ("POST", "/api/v1/jobs/cancel"),
    ("POST", "/api/v1/jobs/claim"),
    ("GET", "/api/v1/jobs/{id}"),
    ("POST", "/api/v1/jobs/{id}/complete"),
    ("POST", "/api/v1/jobs/{id}/fail"),
    ("POST", "/api/v1/jobs/{id}/retry"),
    ("POST", "/api/v1/jobs/{id}/heartbeat"),
    ("POST", "/api/v1/jobs/{id}/cancel"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/providers/status"),
    ("GET", "/api/v1/infra/status"),
}


def template(path: str) -> str:
    """A path with its parameters spelled `{id}` (OpenAPI and test spell them alike)."""
    return re.sub(r"\{[^}]+\}", "{id}", path)


class Recorder:
    """Keeps every response so that the test can search them all for the token."""

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []

    def __call__(self, response: httpx.Response) -> httpx.Response:
        self.responses.append(response)
        return response

    def assert_never_shows(self, *secrets: str) -> None:
        assert self.responses
        for response in self.responses:
            headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            for secret in secrets:
                assert secret not in response.text, (response.request.url, secret)
                assert secret not in headers, (response.request.url, secret)


async def api_v1_routes(client: httpx.AsyncClient) -> set[tuple[str, str]]:
    """Every (method, path) under /api/v1 in the OpenAPI document."""
    doc = await client.get("/openapi.json")
    assert doc.status_code == 200
    return {
        (method.upper(), template(path))
        for path, operations in doc.json()["paths"].items()
        if path.startswith(f"{API}/")
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }


async def exercise(
    client: httpx.AsyncClient, headers: dict[str, str], record: Recorder
) -> dict[tuple[str, str], httpx.Response]:
    """One valid request to every /api/v1 route; returns the answers by route."""
    out: dict[tuple[str, str], httpx.Response] = {}

    async def call(method: str, path: str, route: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", headers)
        response = record(await client.request(method, path, **kwargs))
        out[(method, route)] = response
        return response

    created = await call("POST", f"{API}/jobs", f"{API}/jobs", json=job_body(owner_ref="a"))
    a = created.json()["id"]
    batch = await call(
        "POST",
        f"{API}/jobs/batch",
        f"{API}/jobs/batch",
        json={"jobs": [job_body(owner_ref="b", priority=-1)]},
    )
    b = batch.json()["jobs"][0]["id"]
    await call("GET", f"{API}/jobs", f"{API}/jobs")
    await call("GET", f"{API}/jobs/{a}", f"{API}/jobs/{{id}}")
    await call("GET", f"{API}/jobs/{a}/deliveries", f"{API}/jobs/{{id}}/deliveries")
    claimed = await call(
        "POST", f"{API}/jobs/claim", f"{API}/jobs/claim", json={"worker_id": "w", "limit": 1}
    )
    [job] = claimed.json()["jobs"]
    assert job["id"] == a
    lease = {"lease_token": job["lease_token"]}
    await call("POST", f"{API}/jobs/{a}/heartbeat", f"{API}/jobs/{{id}}/heartbeat", json=lease)
    await call("POST", f"{API}/jobs/{a}/release", f"{API}/jobs/{{id}}/release", json=lease)
    claimed = await client.post(
        f"{API}/jobs/claim", json={"worker_id": "w", "limit": 1}, headers=headers
    )
    lease = {"lease_token": claimed.json()["jobs"][0]["lease_token"]}
    await call(
        "POST",
        f"{API}/jobs/{a}/complete",
        f"{API}/jobs/{{id}}/complete",
        json={"result": {"ok": True}, **lease},
    )
    await call(
        "POST",
        f"{API}/jobs/{b}/fail",
        f"{API}/jobs/{{id}}/fail",
        json={"category": "invalid_input", "message": "bad"},
    )
    await call(
        "POST",
        f"{API}/jobs/complete",
        f"{API}/jobs/complete",
        json={"jobs": [{"id": a, "result": {"ok": True}, **lease}]},
    )
    await call("POST", f"{API}/jobs/{b}/retry", f"{API}/jobs/{{id}}/retry")
    await call("POST", f"{API}/jobs/{b}/cancel", f"{API}/jobs/{{id}}/cancel")
    await call("POST", f"{API}/jobs/retry", f"{API}/jobs/retry", json={"all": True})
    await call("POST", f"{API}/jobs/cancel", f"{API}/jobs/cancel", json={"all": True})
    await call("GET", f"{API}/stats", f"{API}/stats")
    await call("GET", f"{API}/providers/status", f"{API}/providers/status")
    await call("GET", f"{API}/infra/status", f"{API}/infra/status")
    await call("GET", f"{API}/workers", f"{API}/workers")
    uploaded = await call(
        "POST",
        f"{API}/audio",
        f"{API}/audio",
        params={"owner_service": "telephony"},
        content=AUDIO,
        headers={**headers, "Content-Type": "audio/wav"},
    )
    audio_id = uploaded.json()["audio_id"]
    await call("GET", f"{API}/audio/{audio_id}", f"{API}/audio/{{id}}")
    transcribed = await transcription_done(client, headers)
    await call("GET", f"{API}/reports/transcription", f"{API}/reports/transcription")
    await call(
        "GET",
        f"{API}/reports/transcription/jobs/{transcribed}",
        f"{API}/reports/transcription/jobs/{{id}}",
    )
    return out


# A compare-mode transcription result: whisperx selected, qwen compared to it.
TRANSCRIPTION_RESULT = {
    "text": "добрый день",
    "provider": "whisperx",
    "audio_duration": 2.0,
    "attempts": [
        {"provider": "whisperx", "model": "large-v3", "status": "ok", "selected": True,
         "duration_ms": 400},
        {"provider": "qwen2-audio", "model": "qwen", "status": "ok", "selected": False,
         "duration_ms": 900, "text": "добрый вечер", "wer": 0.5},
    ],
}  # fmt: skip


async def transcription_done(
    client: httpx.AsyncClient, headers: dict[str, str], owner: str = "telephony"
) -> str:
    """A completed transcription job of `owner` (its own model profile): its id."""
    profile = f"p-{uuid.uuid4().hex[:12]}"
    body = job_body(
        owner_service=owner,
        task_type="transcription",
        model_profile=profile,
        input={"audio_url": "https://recordings.example/1.wav"},
    )
    created = await client.post(f"{API}/jobs", json=body, headers=headers)
    assert created.status_code == 201, created.text
    claimed = await client.post(
        f"{API}/jobs/claim",
        json={"worker_id": "w", "model_profiles": [profile], "limit": 1},
        headers=headers,
    )
    [job] = claimed.json()["jobs"]
    done = await client.post(
        f"{API}/jobs/{job['id']}/complete",
        json={"lease_token": job["lease_token"], "result": TRANSCRIPTION_RESULT},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    job_id: str = job["id"]
    return job_id


def assert_all_succeeded(answers: dict[tuple[str, str], httpx.Response]) -> None:
    failed = {
        route: (r.status_code, r.text[:200])
        for route, r in answers.items()
        if not 200 <= r.status_code < 300
    }
    assert not failed, failed


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error", "message", "details"}
    assert body["error"] == "unauthorized"
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


async def test_every_api_v1_route_refuses_a_missing_or_wrong_token(
    api_factory: ApiFactory,
) -> None:
    record = Recorder()
    async with api_factory(AI_SERVICE_TOKEN=TOKEN) as client:
        routes = await api_v1_routes(client)
        assert routes >= SEED_ROUTES - {
            ("GET", "/api/v1/providers/status"),
            ("GET", "/api/v1/infra/status"),
        }, sorted(SEED_ROUTES - routes)
        right = {"Authorization": f"Bearer {TOKEN}"}
        before = record(await client.get(f"{API}/stats", headers=right)).json()["total"]
        bad_headers: list[dict[str, str]] = [
            {},
            {"Authorization": f"Bearer {WRONG}"},
            {"Authorization": "Bearer"},
            {"Authorization": TOKEN},  # no scheme
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": f"Bearer {TOKEN.upper()}"},
            {"X-Api-Key": TOKEN},
        ]
        for method, path in sorted(routes):
            url = path.replace("{id}", str(uuid.uuid4()))
            # A body that would be invalid and an id that does not exist: the token
            # check comes first, so neither 422 nor 404 leaks anything.
            body: dict[str, Any] | None = {} if method == "POST" else None
            for headers in bad_headers:
                response = record(await client.request(method, url, headers=headers, json=body))
                assert_unauthorized(response)
            query = record(await client.request(method, url, params={"token": TOKEN}, json=body))
            assert_unauthorized(query)
        after = record(await client.get(f"{API}/stats", headers=right)).json()["total"]
        assert before == after == 0
    record.assert_never_shows(TOKEN, WRONG)


async def test_every_api_v1_route_works_with_the_right_token(api_factory: ApiFactory) -> None:
    record = Recorder()
    async with api_factory(AI_SERVICE_TOKEN=TOKEN) as client:
        answers = await exercise(client, {"Authorization": f"Bearer {TOKEN}"}, record)
        assert_all_succeeded(answers)
        # Every route in the OpenAPI document was exercised, and every seed route exists.
        routes = await api_v1_routes(client)
        assert set(answers) >= routes, sorted(routes - set(answers))
        assert routes >= SEED_ROUTES, sorted(SEED_ROUTES - routes)
        # The scheme name is case-insensitive (RFC 7235).
        lower = record(
            await client.get(f"{API}/stats", headers={"Authorization": f"bearer {TOKEN}"})
        )
        assert lower.status_code == 200
    record.assert_never_shows(TOKEN)


async def test_probes_metrics_and_openapi_stay_open_with_a_token(
    api_factory: ApiFactory,
) -> None:
    record = Recorder()
    async with api_factory(AI_SERVICE_TOKEN=TOKEN) as client:
        for path in OPEN_PATHS:
            for headers in ({}, {"Authorization": f"Bearer {WRONG}"}):
                response = record(await client.get(path, headers=headers))
                assert response.status_code == 200, (path, response.text)
        doc = (await client.get("/openapi.json")).json()
        # The document tells clients about the bearer scheme.
        schemes = doc["components"]["securitySchemes"].values()
        assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes)
    record.assert_never_shows(TOKEN, WRONG)


async def test_without_a_token_configured_no_auth_is_needed(api: httpx.AsyncClient) -> None:
    record = Recorder()
    answers = await exercise(api, {}, record)
    assert_all_succeeded(answers)
    # A stray Authorization header does no harm either.
    stray = record(await api.get(f"{API}/stats", headers={"Authorization": "Bearer anything"}))
    assert stray.status_code == 200
    for path in OPEN_PATHS:
        assert record(await api.get(path)).status_code == 200


async def test_the_token_never_appears_in_any_answer(api_factory: ApiFactory) -> None:
    # Answers of every kind (success, each error, metrics, OpenAPI) to requests that
    # carry the token in their Authorization header.
    record = Recorder()
    right = {"Authorization": f"Bearer {TOKEN}"}
    async with api_factory(AI_SERVICE_TOKEN=TOKEN) as client:
        await exercise(client, right, record)
        malformed: dict[str, Any] = {
            "content": b"{bad",
            "headers": {"content-type": "application/json"},
        }
        cases: tuple[tuple[str, str, dict[str, Any]], ...] = (
            ("GET", f"{API}/jobs/{uuid.uuid4()}", {}),
            ("GET", f"{API}/jobs/not-a-uuid", {}),
            ("POST", f"{API}/jobs", {"json": {"owner_service": ""}}),
            ("POST", f"{API}/jobs", malformed),
            ("GET", f"{API}/jobs", {"params": {"cursor": "nope"}}),
            ("POST", f"{API}/jobs/{uuid.uuid4()}/complete", {"json": {"result": {}}}),
            ("DELETE", f"{API}/jobs", {}),
            ("GET", "/nowhere", {}),
            ("GET", "/metrics", {}),
            ("GET", "/openapi.json", {}),
            ("GET", "/healthz", {}),
            ("GET", "/readyz", {}),
        )
        for method, path, kwargs in cases:
            headers = {**right, **kwargs.pop("headers", {})}
            response = record(await client.request(method, path, headers=headers, **kwargs))
            assert response.status_code < 500, (path, response.text)
    assert len(record.responses) > 25
    record.assert_never_shows(TOKEN)


async def test_without_the_token_the_body_is_never_looked_at(api_factory: ApiFactory) -> None:
    async with api_factory(AI_SERVICE_TOKEN=TOKEN) as client:
        response = await client.post(
            "/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


async def test_without_the_token_an_oversized_body_is_still_401(api_factory: ApiFactory) -> None:
    async with api_factory(AI_SERVICE_TOKEN=TOKEN, MAX_BODY_BYTES="2048") as client:
        response = await client.post("/api/v1/jobs", json=job_body(input={"x": "y" * 10_000}))
    assert response.status_code == 401


# -- scoped tokens (AI_SERVICE_TOKENS): the role matrix ----------------------------

ADMIN = f"adm-{uuid.uuid4().hex}"
ADMIN_SCOPED = f"adms-{uuid.uuid4().hex}"
SUBMITTER = f"sub-{uuid.uuid4().hex}"
OTHER_SUBMITTER = f"crm-{uuid.uuid4().hex}"
WORKER = f"wrk-{uuid.uuid4().hex}"
READER = f"rdr-{uuid.uuid4().hex}"
OWNER = "telephony"
OTHER_OWNER = "crm"
SCOPED_ENV = {
    "AI_SERVICE_TOKEN": ADMIN,
    "AI_SERVICE_TOKENS": (
        f"{ADMIN_SCOPED}:admin,{SUBMITTER}:submitter:{OWNER},"
        f"{OTHER_SUBMITTER}:submitter:{OTHER_OWNER},{WORKER}:worker,{READER}:reader"
    ),
}
ALL_TOKENS = (ADMIN, ADMIN_SCOPED, SUBMITTER, OTHER_SUBMITTER, WORKER, READER)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


CALLERS: dict[str, dict[str, str]] = {
    "none": {},
    "wrong": bearer(WRONG),
    "admin": bearer(ADMIN),
    "admin-scoped": bearer(ADMIN_SCOPED),
    "submitter": bearer(SUBMITTER),
    "worker": bearer(WORKER),
    "reader": bearer(READER),
}

# Every /api/v1 route -> (success status, the non-admin roles that may call it).
# Written out by hand: it is the specification the code is held to. A route
# missing here fails test_the_matrix_covers_every_api_v1_route.
MATRIX: dict[tuple[str, str], tuple[int, set[str]]] = {
    ("POST", "/api/v1/jobs"): (201, {"submitter"}),
    ("POST", "/api/v1/jobs/batch"): (201, {"submitter"}),
    ("GET", "/api/v1/jobs"): (200, {"submitter", "worker", "reader"}),
    ("GET", "/api/v1/jobs/{job_id}"): (200, {"submitter", "worker", "reader"}),
    ("GET", "/api/v1/jobs/{job_id}/deliveries"): (200, {"submitter", "worker", "reader"}),
    ("POST", "/api/v1/jobs/retry"): (200, {"submitter"}),
    ("POST", "/api/v1/jobs/cancel"): (200, {"submitter"}),
    ("POST", "/api/v1/jobs/{job_id}/retry"): (200, {"submitter"}),
    ("POST", "/api/v1/jobs/{job_id}/cancel"): (200, {"submitter"}),
    ("POST", "/api/v1/jobs/claim"): (200, {"worker"}),
    ("POST", "/api/v1/jobs/complete"): (200, {"worker"}),
    ("POST", "/api/v1/jobs/{job_id}/complete"): (200, {"worker"}),
    ("POST", "/api/v1/jobs/{job_id}/fail"): (200, {"worker"}),
    ("POST", "/api/v1/jobs/{job_id}/heartbeat"): (200, {"worker"}),
    ("POST", "/api/v1/jobs/{job_id}/release"): (200, {"worker"}),
    ("GET", "/api/v1/stats"): (200, {"worker", "reader"}),
    ("GET", "/api/v1/providers/status"): (200, {"worker", "reader"}),
    ("GET", "/api/v1/infra/status"): (200, {"worker", "reader"}),
    ("GET", "/api/v1/workers"): (200, {"worker", "reader"}),
    ("POST", "/api/v1/audio"): (201, {"submitter"}),
    ("GET", "/api/v1/audio/{audio_id}"): (200, {"submitter", "worker", "reader"}),
    ("GET", "/api/v1/reports/transcription"): (200, {"submitter", "reader"}),
    ("GET", "/api/v1/reports/transcription/jobs/{job_id}"): (200, {"submitter", "reader"}),
}
# Routes where a submitter naming another owner_service gets 403 (body or query).
OWNER_FORBIDDEN_ROUTES = {
    ("POST", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs/batch"),
    ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs/retry"),
    ("POST", "/api/v1/jobs/cancel"),
    ("POST", "/api/v1/audio"),
    ("GET", "/api/v1/reports/transcription"),
}


def expected_status(route: tuple[str, str], caller: str) -> int:
    success, allowed = MATRIX[route]
    if caller in ("none", "wrong"):
        return 401
    if caller.startswith("admin") or caller in allowed:
        return success
    return 403


def app_api_v1_routes() -> set[tuple[str, str]]:
    """Every (method, path) under /api/v1 that the app routes (not only the documented ones).

    HEAD is left out: auth answers it as the GET of the same path.
    """
    app = create_app(make_settings("postgresql://unused/db", **SCOPED_ENV))
    return {
        (method, str(route.path))
        for route in iter_route_contexts(app.routes)
        if str(route.path).startswith(f"{API}/")
        for method in (route.methods or set()) - {"HEAD"}
    }


def test_the_matrix_covers_every_api_v1_route() -> None:
    routes = app_api_v1_routes()
    assert routes == set(MATRIX), {
        "missing from MATRIX": sorted(routes - set(MATRIX)),
        "not a route": sorted(set(MATRIX) - routes),
    }
    assert set(REQUESTS) == set(MATRIX)


class Admin:
    """Set-up calls with the admin token: fresh jobs of a unique task type for each request."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def job(self, owner: str = OWNER) -> tuple[str, str]:
        task_type = f"t-{uuid.uuid4().hex[:12]}"
        response = await self.client.post(
            f"{API}/jobs",
            headers=bearer(ADMIN),
            json=job_body(owner_service=owner, owner_ref=task_type, task_type=task_type),
        )
        assert response.status_code == 201, response.text
        return response.json()["id"], task_type

    async def audio(self, owner: str = OWNER) -> str:
        """A stored recording of `owner`: its audio_id."""
        response = await self.client.post(
            f"{API}/audio",
            params={"owner_service": owner},
            headers={**bearer(ADMIN), "Content-Type": "audio/wav"},
            content=AUDIO,
        )
        assert response.status_code == 201, response.text
        audio_id: str = response.json()["audio_id"]
        return audio_id

    async def running(self, owner: str = OWNER) -> tuple[str, str]:
        """A claimed job: its id and lease token."""
        job_id, task_type = await self.job(owner)
        response = await self.client.post(
            f"{API}/jobs/claim",
            headers=bearer(ADMIN),
            json={"worker_id": "setup", "task_types": [task_type], "limit": 1},
        )
        [job] = response.json()["jobs"]
        assert job["id"] == job_id
        return job_id, job["lease_token"]

    async def snapshot(self) -> list[tuple[Any, ...]]:
        """Every job's state, to prove that a refused request changed nothing."""
        response = await self.client.get(f"{API}/jobs?limit=500", headers=bearer(ADMIN))
        return [
            (j["id"], j["status"], j["updated_at"], j["attempt"], j["max_attempts"])
            for j in response.json()["jobs"]
        ]


Request = tuple[str, dict[str, Any] | bytes | None]  # (URL, JSON body or raw audio)


async def _create(admin: Admin) -> Request:
    return f"{API}/jobs", job_body(owner_ref=uuid.uuid4().hex)


async def _batch(admin: Admin) -> Request:
    return f"{API}/jobs/batch", {"jobs": [job_body(owner_ref=uuid.uuid4().hex)]}


async def _list(admin: Admin) -> Request:
    return f"{API}/jobs", None


async def _get(admin: Admin) -> Request:
    job_id, _ = await admin.job()
    return f"{API}/jobs/{job_id}", None


async def _deliveries(admin: Admin) -> Request:
    job_id, _ = await admin.job()
    return f"{API}/jobs/{job_id}/deliveries", None


async def _bulk_retry(admin: Admin) -> Request:
    _, task_type = await admin.running()
    return f"{API}/jobs/retry", {"owner_service": OWNER, "task_type": task_type}


async def _bulk_cancel(admin: Admin) -> Request:
    _, task_type = await admin.job()
    return f"{API}/jobs/cancel", {"owner_service": OWNER, "task_type": task_type}


async def _retry(admin: Admin) -> Request:
    job_id, _ = await admin.running()
    return f"{API}/jobs/{job_id}/retry", None


async def _cancel(admin: Admin) -> Request:
    job_id, _ = await admin.job()
    return f"{API}/jobs/{job_id}/cancel", None


async def _claim(admin: Admin) -> Request:
    _, task_type = await admin.job()
    return f"{API}/jobs/claim", {"worker_id": "w", "task_types": [task_type], "limit": 1}


async def _complete_many(admin: Admin) -> Request:
    job_id, lease = await admin.running()
    return f"{API}/jobs/complete", {
        "jobs": [{"id": job_id, "lease_token": lease, "result": {"ok": True}}]
    }


async def _complete(admin: Admin) -> Request:
    job_id, lease = await admin.running()
    return f"{API}/jobs/{job_id}/complete", {"lease_token": lease, "result": {"ok": True}}


async def _fail(admin: Admin) -> Request:
    job_id, lease = await admin.running()
    body = {"lease_token": lease, "category": "invalid_input", "message": "bad"}
    return f"{API}/jobs/{job_id}/fail", body


async def _heartbeat(admin: Admin) -> Request:
    job_id, lease = await admin.running()
    return f"{API}/jobs/{job_id}/heartbeat", {"lease_token": lease}


async def _release(admin: Admin) -> Request:
    job_id, lease = await admin.running()
    return f"{API}/jobs/{job_id}/release", {"lease_token": lease}


async def _plain(path: str) -> Request:
    return f"{API}{path}", None


async def _upload(admin: Admin) -> Request:
    return f"{API}/audio?owner_service={OWNER}", AUDIO


async def _download(admin: Admin) -> Request:
    return f"{API}/audio/{await admin.audio()}", None


async def _comparison(admin: Admin) -> Request:
    job_id = await transcription_done(admin.client, bearer(ADMIN))
    return f"{API}/reports/transcription/jobs/{job_id}", None


def sent(headers: dict[str, str], body: dict[str, Any] | bytes | None) -> dict[str, Any]:
    """`client.request` arguments for a JSON body, or for raw audio (the upload)."""
    if isinstance(body, bytes):
        return {"content": body, "headers": {**headers, "Content-Type": "audio/wav"}}
    return {"json": body, "headers": headers}


REQUESTS: dict[tuple[str, str], Callable[[Admin], Awaitable[Request]]] = {
    ("POST", "/api/v1/jobs"): _create,
    ("POST", "/api/v1/jobs/batch"): _batch,
    ("GET", "/api/v1/jobs"): _list,
    ("GET", "/api/v1/jobs/{job_id}"): _get,
    ("GET", "/api/v1/jobs/{job_id}/deliveries"): _deliveries,
    ("POST", "/api/v1/jobs/retry"): _bulk_retry,
    ("POST", "/api/v1/jobs/cancel"): _bulk_cancel,
    ("POST", "/api/v1/jobs/{job_id}/retry"): _retry,
    ("POST", "/api/v1/jobs/{job_id}/cancel"): _cancel,
    ("POST", "/api/v1/jobs/claim"): _claim,
    ("POST", "/api/v1/jobs/complete"): _complete_many,
    ("POST", "/api/v1/jobs/{job_id}/complete"): _complete,
    ("POST", "/api/v1/jobs/{job_id}/fail"): _fail,
    ("POST", "/api/v1/jobs/{job_id}/heartbeat"): _heartbeat,
    ("POST", "/api/v1/jobs/{job_id}/release"): _release,
    ("GET", "/api/v1/stats"): lambda admin: _plain("/stats"),
    ("GET", "/api/v1/providers/status"): lambda admin: _plain("/providers/status"),
    ("GET", "/api/v1/infra/status"): lambda admin: _plain("/infra/status"),
    ("GET", "/api/v1/workers"): lambda admin: _plain("/workers"),
    ("POST", "/api/v1/audio"): _upload,
    ("GET", "/api/v1/audio/{audio_id}"): _download,
    ("GET", "/api/v1/reports/transcription"): lambda admin: _plain("/reports/transcription"),
    ("GET", "/api/v1/reports/transcription/jobs/{job_id}"): _comparison,
}


async def test_every_route_answers_each_role_as_the_matrix_says(api_factory: ApiFactory) -> None:
    record = Recorder()
    outcome: dict[tuple[tuple[str, str], str], int] = {}
    async with api_factory(**SCOPED_ENV) as client:
        admin = Admin(client)
        for route in sorted(MATRIX):
            method, template = route
            for caller, headers in CALLERS.items():
                url, body = await REQUESTS[route](admin)
                before = await admin.snapshot()
                response = record(await client.request(method, url, **sent(headers, body)))
                outcome[(route, caller)] = response.status_code
                want = expected_status(route, caller)
                assert response.status_code == want, (route, caller, response.text)
                if want == 401:
                    assert_unauthorized(response)
                elif want == 403:
                    error = response.json()
                    assert error["error"] == "forbidden"
                    assert error["message"] == f"role {caller} may not {method} {template}"
                if want in (401, 403):
                    # Refused before the body was read: nothing changed.
                    assert await admin.snapshot() == before, (route, caller)
        doc = (await client.get("/openapi.json")).json()
    assert len(outcome) == len(MATRIX) * len(CALLERS)
    record.assert_never_shows(*ALL_TOKENS, WRONG)
    # The OpenAPI document declares 403 exactly where it can happen, and names the roles.
    can_403 = {route for (route, _), status in outcome.items() if status == 403}
    for method, template in MATRIX:
        operation = doc["paths"][template][method.lower()]
        declared = "403" in operation["responses"]
        assert declared == ((method, template) in can_403 | OWNER_FORBIDDEN_ROUTES), template
        assert "Roles: admin" in operation["description"], template
        assert operation["security"] == [{"bearer": []}]


async def test_scoped_tokens_alone_turn_auth_on(api_factory: ApiFactory) -> None:
    async with api_factory(AI_SERVICE_TOKENS=f"{READER}:reader,{SUBMITTER}:submitter:x") as client:
        assert_unauthorized(await client.get(f"{API}/stats"))
        assert_unauthorized(await client.get(f"{API}/stats", headers=bearer(ADMIN)))
        assert (await client.get(f"{API}/stats", headers=bearer(READER))).status_code == 200
        refused = await client.post(f"{API}/jobs", headers=bearer(READER), json=job_body())
        assert refused.status_code == 403
        assert refused.json()["message"] == "role reader may not POST /api/v1/jobs"


async def test_an_unknown_path_under_api_v1_is_admin_only(api_factory: ApiFactory) -> None:
    async with api_factory(**SCOPED_ENV) as client:
        for token in (SUBMITTER, WORKER, READER):
            response = await client.delete(f"{API}/jobs", headers=bearer(token))
            assert response.status_code == 403, token
            assert response.json()["error"] == "forbidden"
        assert (await client.delete(f"{API}/jobs", headers=bearer(ADMIN))).status_code == 405
        assert (await client.get(f"{API}/nowhere", headers=bearer(ADMIN))).status_code == 404
        # HEAD follows the rule of GET on the same path.
        head = await client.head(f"{API}/stats", headers=bearer(SUBMITTER))
        assert head.status_code == 403
        for token in (READER, WORKER, ADMIN):
            head = await client.head(f"{API}/stats", headers=bearer(token))
            assert head.status_code not in (401, 403), token


# -- submitter isolation ------------------------------------------------------------


async def test_a_submitter_acts_only_for_its_own_owner_service(api_factory: ApiFactory) -> None:
    record = Recorder()
    async with api_factory(**SCOPED_ENV) as client:
        admin = Admin(client)
        sub = bearer(SUBMITTER)

        async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            kwargs.setdefault("headers", sub)
            return record(await client.request(method, f"{API}{path}", **kwargs))

        theirs, _ = await admin.job(OTHER_OWNER)
        ours, _ = await admin.job(OWNER)
        before = await admin.snapshot()

        # Create for another owner: 403 naming the field; nothing created.
        refused = await call("POST", "/jobs", json=job_body(owner_service=OTHER_OWNER))
        assert refused.status_code == 403
        assert refused.json()["error"] == "forbidden"
        assert refused.json()["message"].startswith("owner_service: ")
        # A batch with one foreign item (directly or through defaults): 403 naming the item.
        mixed = {"jobs": [job_body(owner_ref="a"), job_body(owner_ref="b", owner_service="crm")]}
        refused = await call("POST", "/jobs/batch", json=mixed)
        assert refused.status_code == 403
        assert refused.json()["message"].startswith("jobs[1].owner_service: ")
        assert refused.json()["details"]["field"] == "jobs[1].owner_service"
        by_default = {
            "defaults": {"owner_service": OTHER_OWNER},
            "jobs": [{k: v for k, v in job_body().items() if k != "owner_service"}],
        }
        refused = await call("POST", "/jobs/batch", json=by_default)
        assert refused.status_code == 403
        assert refused.json()["message"].startswith("jobs[0].owner_service: ")
        assert await admin.snapshot() == before

        # Another owner's job is "not found", exactly like a job that does not exist.
        hidden = await call("GET", f"/jobs/{theirs}")
        missing_id = str(uuid.uuid4())
        missing = await call("GET", f"/jobs/{missing_id}")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == {
            k: v.replace(missing_id, theirs) if isinstance(v, str) else v
            for k, v in missing.json().items()
        } | {"details": {"job_id": theirs}}
        assert (await call("GET", f"/jobs/{ours}")).status_code == 200

        # The list holds only its own jobs; naming another owner is 403.
        listed = await call("GET", "/jobs", params={"limit": 500})
        assert {j["owner_service"] for j in listed.json()["jobs"]} == {OWNER}
        assert ours in {j["id"] for j in listed.json()["jobs"]}
        own_filter = await call("GET", "/jobs", params={"owner_service": OWNER})
        assert own_filter.status_code == 200
        assert (await call("GET", "/jobs", params={"owner_service": "crm"})).status_code == 403

        # Cancel and retry of another owner's job: 404, and the job is untouched.
        assert (await call("POST", f"/jobs/{theirs}/cancel")).status_code == 404
        running_theirs, _ = await admin.running(OTHER_OWNER)
        before = await admin.snapshot()
        assert (await call("POST", f"/jobs/{running_theirs}/retry")).status_code == 404
        assert (await call("POST", f"/jobs/{theirs}/cancel")).status_code == 404
        assert await admin.snapshot() == before

        # Bulk: another owner in the filter is 403; without one, only its own jobs change.
        for action in ("cancel", "retry"):
            refused = await call("POST", f"/jobs/{action}", json={"owner_service": OTHER_OWNER})
            assert refused.status_code == 403, action
        assert await admin.snapshot() == before
        cancelled = await call("POST", "/jobs/cancel", json={"status": ["pending"]})
        assert cancelled.status_code == 200
        assert ours in cancelled.json()["ids"]
        assert theirs not in cancelled.json()["ids"]
        still = await client.get(f"{API}/jobs/{theirs}", headers=bearer(ADMIN))
        assert still.json()["status"] == "pending"
        retried = await call("POST", "/jobs/retry", json={"status": ["running"]})
        assert running_theirs not in retried.json()["ids"]
        # An empty filter is refused with a hint, as for every caller.
        empty = await call("POST", "/jobs/cancel", json={})
        assert empty.status_code == 422
        assert OWNER in empty.json()["message"]

        # Own jobs: cancel works; queue-wide stats are not for submitters.
        mine, _ = await admin.job(OWNER)
        assert (await call("POST", f"/jobs/{mine}/cancel")).status_code == 200
        assert (await call("GET", "/stats")).status_code == 403

        # Recordings: uploaded for its own owner only; another owner's is "not found".
        foreign = await call(
            "POST",
            "/audio",
            params={"owner_service": OTHER_OWNER},
            content=AUDIO,
            headers={**sub, "Content-Type": "audio/wav"},
        )
        assert foreign.status_code == 403
        assert foreign.json()["message"].startswith("owner_service: ")
        own_audio = await call(
            "POST", "/audio", content=AUDIO, headers={**sub, "Content-Type": "audio/wav"}
        )
        assert own_audio.status_code == 201
        assert own_audio.json()["owner_service"] == OWNER  # its own, unnamed
        their_audio = await admin.audio(OTHER_OWNER)
        assert (await call("GET", f"/audio/{their_audio}")).status_code == 404
        got = await call("GET", f"/audio/{own_audio.json()['audio_id']}")
        assert got.status_code == 200
        assert got.content == AUDIO
        # A job of its own cannot name another owner's recording (same answer as none).
        job = job_body(task_type="transcription", input={"audio_id": their_audio})
        refused = await call("POST", "/jobs", json=job)
        assert refused.status_code == 422
        assert refused.json()["details"]["field"] == "input.audio_id"

        # The transcription report: its own owner_service only (another one: 403), and
        # another owner's job compared is "not found".
        ours_transcribed = await transcription_done(client, bearer(ADMIN), OWNER)
        theirs_transcribed = await transcription_done(client, bearer(ADMIN), OTHER_OWNER)
        own_report = await call("GET", "/reports/transcription")
        assert own_report.status_code == 200
        assert own_report.json()["owner_service"] == OWNER
        assert {d["owner_service"] for d in own_report.json()["disagreements"]} == {OWNER}
        assert ours_transcribed in {d["job_id"] for d in own_report.json()["disagreements"]}
        foreign = await call("GET", "/reports/transcription", params={"owner_service": "crm"})
        assert foreign.status_code == 403
        assert foreign.json()["message"].startswith("owner_service: ")
        assert (await call("GET", f"/reports/transcription/jobs/{ours_transcribed}")).is_success
        hidden = await call("GET", f"/reports/transcription/jobs/{theirs_transcribed}")
        assert hidden.status_code == 404
        assert hidden.json()["error"] == "job_not_found"

        # The other submitter sees its job and not ours.
        crm = bearer(OTHER_SUBMITTER)
        assert (await client.get(f"{API}/jobs/{theirs}", headers=crm)).status_code == 200
        assert (await client.get(f"{API}/jobs/{ours}", headers=crm)).status_code == 404
        assert (await client.get(f"{API}/jobs/{ours}/deliveries", headers=crm)).status_code == 404
    record.assert_never_shows(*ALL_TOKENS)


async def test_bulk_with_all_true_is_admin_only(api_factory: ApiFactory) -> None:
    async with api_factory(**SCOPED_ENV) as client:
        admin = Admin(client)
        await admin.job(OWNER)
        await admin.job(OTHER_OWNER)
        for action in ("cancel", "retry"):
            before = await admin.snapshot()
            for token in (SUBMITTER, WORKER, READER):
                for body in ({"all": True}, {"all": True, "owner_service": OWNER}):
                    refused = await client.post(
                        f"{API}/jobs/{action}", headers=bearer(token), json=body
                    )
                    assert refused.status_code == 403, (action, token, body)
                    assert refused.json()["error"] == "forbidden"
            submitter = await client.post(
                f"{API}/jobs/{action}", headers=bearer(SUBMITTER), json={"all": True}
            )
            assert submitter.json()["message"].startswith("all: role submitter may not")
            assert await admin.snapshot() == before
        for token in (ADMIN_SCOPED, ADMIN):
            done = await client.post(
                f"{API}/jobs/cancel", headers=bearer(token), json={"all": True}
            )
            assert done.status_code == 200, token
        assert {status for _, status, *_ in await admin.snapshot()} == {"cancelled"}


# -- start-up warning and logs --------------------------------------------------------


async def test_api_start_without_a_token_logs_a_warning(
    api_factory: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ai_service.api"):
        async with api_factory():
            pass
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.name for r in warnings] == ["ai_service.api.auth"]
        assert "AUTH IS OFF" in warnings[0].getMessage()
        assert "AI_SERVICE_TOKEN" in warnings[0].getMessage()
        caplog.clear()
        async with api_factory(AI_SERVICE_TOKEN=TOKEN):
            pass
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_access_log_names_the_role_and_never_the_token(
    api_factory: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Every record of every logger, unredacted: the token must never be logged at all.
    with caplog.at_level(logging.DEBUG):
        async with api_factory(**SCOPED_ENV) as client:
            admin = Admin(client)
            for route in sorted(MATRIX):
                for headers in CALLERS.values():
                    url, body = await REQUESTS[route](admin)
                    await client.request(route[0], url, **sent(headers, body))
    text = caplog.text + "\n".join(repr(r.__dict__) for r in caplog.records)
    for token in (*ALL_TOKENS, WRONG):
        assert token not in text
    access = [r.getMessage() for r in caplog.records if r.name == "ai_service.api.access"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name.endswith("access"))
    assert "POST /api/v1/jobs 201 " in "\n".join(access)
    for caller in (
        f"role=submitter owner={OWNER} token_id={token_id(SUBMITTER)}",
        f"role=worker token_id={token_id(WORKER)}",
        f"role=reader token_id={token_id(READER)}",
        f"role=admin token_id={token_id(ADMIN)}",
        f"role=admin token_id={token_id(ADMIN_SCOPED)}",
        "auth=rejected",
    ):
        assert any(line.endswith(caller) for line in access), caller
    assert not any("?" in line for line in access)  # query strings are not logged


# -- the real `ai-service api` process ------------------------------------------------


async def test_ai_service_api_warns_at_start_when_auth_is_off(
    tmp_path: Path, database_url: str
) -> None:
    async with ServiceGroup(tmp_path, database_url) as services:
        open_api = await services.start("api", "open")
        closed_api = await services.start("api", "closed", **SCOPED_ENV)
        async with httpx.AsyncClient(base_url=closed_api.base_url, timeout=10) as client:
            ok = await client.post(f"{API}/jobs", headers=bearer(SUBMITTER), json=job_body())
            assert ok.status_code == 201
            assert (await client.get(f"{API}/stats", headers=bearer(READER))).status_code == 200
        await open_api.terminate()
        await closed_api.terminate()
        open_lines = [json.loads(line) for line in open_api.log().splitlines() if line]
        closed_log = closed_api.log()
    [warning] = [e for e in open_lines if e["level"] == "warning"]
    assert warning["logger"] == "ai_service.api.auth"
    assert warning["message"].startswith("AUTH IS OFF")
    entries = [json.loads(line) for line in closed_log.splitlines() if line]
    assert not [e for e in entries if e["level"] == "warning"]
    access = [e["message"] for e in entries if e["logger"] == "ai_service.api.access"]
    assert any(
        m.endswith(f"role=submitter owner={OWNER} token_id={token_id(SUBMITTER)}") for m in access
    )
    assert any(m.endswith(f"role=reader token_id={token_id(READER)}") for m in access)
    for token in ALL_TOKENS:
        assert token not in closed_log


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AI_SERVICE_TOKEN": "   "}, "AI_SERVICE_TOKEN"),
        ({"AI_SERVICE_TOKENS": f"{SUBMITTER}:submitter"}, "AI_SERVICE_TOKENS"),
    ],
)
async def test_ai_service_api_refuses_to_start_with_a_bad_token_setting(
    tmp_path: Path, database_url: str, env: dict[str, str], variable: str
) -> None:
    async with ServiceGroup(tmp_path, database_url) as services:
        api = await services.spawn("api", "api", **env)
        assert await asyncio.wait_for(api.proc.wait(), START_TIMEOUT) == 2
        output = api.log()
    assert f"configuration error: {variable} " in output
    for token in ALL_TOKENS:
        assert token not in output
