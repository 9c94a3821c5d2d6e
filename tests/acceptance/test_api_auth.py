"""Acceptance tests of the bearer token (`AI_SERVICE_TOKEN`) over HTTP.

Every `/api/v1/*` route needs `Authorization: Bearer <token>` when the token is
configured; probes, metrics and the OpenAPI document stay open; the token
never shows up in an answer.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from tests.conftest import ApiFactory
from tests.helpers import job_body

API = "/api/v1"
TOKEN = f"tok-{uuid.uuid4().hex}"
WRONG = f"wrong-{uuid.uuid4().hex}"
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")

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
        response = record(await client.request(method, path, headers=headers, **kwargs))
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
    claimed = await call(
        "POST", f"{API}/jobs/claim", f"{API}/jobs/claim", json={"worker_id": "w", "limit": 1}
    )
    [job] = claimed.json()["jobs"]
    assert job["id"] == a
    lease = {"lease_token": job["lease_token"]}
    await call("POST", f"{API}/jobs/{a}/heartbeat", f"{API}/jobs/{{id}}/heartbeat", json=lease)
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
    return out


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
