"""Acceptance tests of the dashboard (`/ui`) over HTTP: login, session cookie, CSRF, roles.

The browser tests (tests/browser) drive the same pages in Chromium; these check the
rules a browser does not show: cookie attributes, forged and tampered requests, every
route without a session.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from ai_service.api.app import create_app
from ai_service.ui.session import COOKIE
from tests.conftest import ApiFactory
from tests.helpers import job_body, make_settings

API = "/api/v1"
ADMIN = f"admin-{uuid.uuid4().hex}"
READER = f"reader-{uuid.uuid4().hex}"
SUBMITTER = f"sub-{uuid.uuid4().hex}"
TOKENS = {
    "AI_SERVICE_TOKEN": ADMIN,
    "AI_SERVICE_TOKENS": f"{READER}:reader,{SUBMITTER}:submitter:telephony",
}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def origin(client: httpx.AsyncClient) -> dict[str, str]:
    """The Origin header a browser sends with a form of this app."""
    return {"Origin": str(client.base_url).rstrip("/")}


async def login(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/ui/login", data={"token": token}, headers=origin(client))


async def csrf_of(client: httpx.AsyncClient, path: str = "/ui") -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found is not None
    return found.group(1)


async def failed_job(client: httpx.AsyncClient, token: str = ADMIN) -> str:
    """A job that failed for good (permanent), through the API."""
    bearer = {"Authorization": f"Bearer {token}"}
    created = await client.post(f"{API}/jobs", json=job_body(), headers=bearer)
    assert created.status_code == 201, created.text
    claimed = await client.post(
        f"{API}/jobs/claim",
        json={"worker_id": "w-ui", "task_types": ["llm_chat"], "limit": 1},
        headers=bearer,
    )
    [job] = claimed.json()["jobs"]
    failed = await client.post(
        f"{API}/jobs/{job['id']}/fail",
        json={"category": "permanent", "message": "boom", "lease_token": job["lease_token"]},
        headers=bearer,
    )
    assert failed.json()["status"] == "failed", failed.text
    return str(job["id"])


async def test_login_sets_a_strict_httponly_cookie_holding_no_token(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(**TOKENS) as client:
        response = await login(client, ADMIN)
        assert response.status_code == 303
        assert response.headers["location"] == "/ui"
        cookie = response.headers["set-cookie"]
        assert f"{COOKIE}=" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Path=/ui" in cookie
        assert "Max-Age=43200" in cookie
        assert "Secure" not in cookie  # plain http here; https sets it
        assert ADMIN not in cookie
        page = await client.get("/ui")
        assert page.status_code == 200
        assert "Signed in as <strong>admin</strong>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("token", ["wrong-token", SUBMITTER, ""])
async def test_a_refused_login_says_nothing_about_why_and_is_logged(
    api_factory: ApiFactory, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with api_factory(**TOKENS) as client:
        with caplog.at_level(logging.WARNING, logger="ai_service.ui"):
            response = await login(client, token)
        assert response.status_code == 401
        assert "Login failed: the token was not accepted." in response.text
        assert "set-cookie" not in response.headers
        assert "ui login failed" in caplog.text
        assert SUBMITTER not in caplog.text
        assert ADMIN not in caplog.text
        assert (await client.get("/ui")).status_code == 303


async def test_failed_logins_are_rate_limited_per_address(api_factory: ApiFactory) -> None:
    async with api_factory(**TOKENS) as client:
        for _ in range(10):
            assert (await login(client, "wrong")).status_code == 401
        blocked = await login(client, ADMIN)  # even the right token, for a while
        assert blocked.status_code == 429
        assert "Too many failed logins" in blocked.text


async def test_a_login_from_another_origin_is_refused(api_factory: ApiFactory) -> None:
    async with api_factory(**TOKENS) as client:
        response = await client.post(
            "/ui/login", data={"token": ADMIN}, headers={"Origin": "https://evil.example"}
        )
        assert response.status_code == 403
        assert "set-cookie" not in response.headers


async def test_a_tampered_or_foreign_cookie_is_no_session(
    api_factory: ApiFactory, database_url: str
) -> None:
    async with api_factory(**TOKENS) as client:
        await login(client, READER)
        value = client.cookies[COOKIE]
        payload, signature = value.split(".")
        # The payload says admin now; the signature no longer matches.
        forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
        client.cookies.set(COOKIE, f"{forged}.{signature}", path="/ui")
        assert (await client.get("/ui")).status_code == 303
    # Other tokens, other key: the cookie of the first deployment opens nothing here.
    async with api_factory(AI_SERVICE_TOKEN=f"other-{uuid.uuid4().hex}") as other:
        other.cookies.set(COOKIE, value, path="/ui")
        assert (await other.get("/ui")).status_code == 303


def ui_routes() -> list[tuple[str, str]]:
    app = create_app(make_settings("postgresql://unused@127.0.0.1/none"))
    return sorted(
        (method, str(route.path))
        for route in iter_route_contexts(app.routes)
        if str(route.path).startswith("/ui") and not str(route.path).startswith("/ui/static")
        for method in (route.methods or set()) - {"HEAD"}
    )


async def test_every_ui_route_without_a_session_redirects_to_login_or_answers_401(
    api_factory: ApiFactory,
) -> None:
    routes = ui_routes()
    assert ("GET", "/ui/jobs/{job_id}") in routes
    async with api_factory(**TOKENS) as client:
        job_id = await failed_job(client)
        for method, path in routes:
            url = path.replace("{job_id}", job_id)
            response = await client.request(method, url, headers=origin(client))
            if path == "/ui/login":
                # The login form itself (GET), or a refused empty login (POST).
                assert response.status_code in (200, 401), (method, path)
                assert job_id not in response.text
                continue
            if method == "GET" and not path.startswith("/ui/data/"):
                assert response.status_code == 303, (method, path)
                assert response.headers["location"] == "/ui/login"
            else:
                assert response.status_code == 401, (method, path)
            assert job_id not in response.text
            assert "llm_chat" not in response.text
        # Nothing changed: the retry without a session did not run.
        job = await client.get(f"{API}/jobs/{job_id}", headers={"Authorization": f"Bearer {ADMIN}"})
        assert job.json()["status"] == "failed"


async def test_an_admin_retries_with_the_csrf_token_and_not_without(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(**TOKENS) as client:
        job_id = await failed_job(client)
        await login(client, ADMIN)
        csrf = await csrf_of(client, f"/ui/jobs/{job_id}")
        missing = await client.post(f"/ui/jobs/{job_id}/retry", headers=origin(client))
        assert missing.status_code == 403
        assert "CSRF" in missing.text
        wrong = await client.post(
            f"/ui/jobs/{job_id}/retry", data={"csrf": "x" + csrf}, headers=origin(client)
        )
        assert wrong.status_code == 403
        foreign = await client.post(
            f"/ui/jobs/{job_id}/retry",
            data={"csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        no_origin = await client.post(f"/ui/jobs/{job_id}/retry", data={"csrf": csrf})
        assert no_origin.status_code == 403
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        assert (await client.get(f"{API}/jobs/{job_id}", headers=bearer)).json()[
            "status"
        ] == "failed"
        done = await client.post(
            f"/ui/jobs/{job_id}/retry", data={"csrf": csrf}, headers=origin(client)
        )
        assert done.status_code == 303
        assert done.headers["location"] == f"/ui/jobs/{job_id}?notice=retried"
        job = (await client.get(f"{API}/jobs/{job_id}", headers=bearer)).json()
        assert job["status"] == "pending"


async def test_a_reader_sees_everything_but_every_action_answers_403(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(**TOKENS) as client:
        job_id = await failed_job(client)
        await login(client, READER)
        page = await client.get(f"/ui/jobs/{job_id}")
        assert page.status_code == 200
        assert "boom" in page.text
        assert f'action="/ui/jobs/{job_id}/retry"' not in page.text
        listing = await client.get("/ui/jobs", params={"status": "failed"})
        assert job_id in listing.text
        assert "Bulk retry" not in listing.text
        csrf = await csrf_of(client, f"/ui/jobs/{job_id}")
        forged: list[tuple[str, dict[str, Any]]] = [
            (f"/ui/jobs/{job_id}/retry", {"csrf": csrf}),
            (f"/ui/jobs/{job_id}/cancel", {"csrf": csrf}),
            ("/ui/jobs/bulk", {"csrf": csrf, "action": "retry", "status": "failed"}),
        ]
        for path, data in forged:
            response = await client.post(path, data=data, headers=origin(client))
            assert response.status_code == 403, path
            assert "a reader may look but not act" in response.text
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        assert (await client.get(f"{API}/jobs/{job_id}", headers=bearer)).json()[
            "status"
        ] == "failed"


async def test_bulk_retry_shows_the_count_then_retries_that_many(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(**TOKENS) as client:
        ids = [await failed_job(client) for _ in range(3)]
        await login(client, ADMIN)
        confirm = await client.get(
            "/ui/jobs/bulk", params={"action": "retry", "task_type": "llm_chat"}
        )
        assert confirm.status_code == 200
        assert "<strong>3 job(s)</strong> will be retried" in confirm.text
        csrf = CSRF.search(confirm.text)
        assert csrf is not None
        done = await client.post(
            "/ui/jobs/bulk",
            data={"csrf": csrf.group(1), "action": "retry", "task_type": "llm_chat"},
            headers=origin(client),
        )
        assert done.status_code == 200
        assert "Retried 3 job(s)." in done.text
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        for job_id in ids:
            job = (await client.get(f"{API}/jobs/{job_id}", headers=bearer)).json()
            assert job["status"] == "pending"
        empty = await client.get("/ui/jobs/bulk", params={"action": "cancel"})
        assert empty.status_code == 400
        assert "Name a filter first" in empty.text


async def test_a_bad_filter_names_the_field(api_factory: ApiFactory) -> None:
    async with api_factory(**TOKENS) as client:
        await login(client, READER)
        response = await client.get("/ui/jobs", params={"created_after": "yesterday"})
        assert response.status_code == 400
        assert "Invalid filter: created_after" in response.text


async def test_with_auth_off_the_dashboard_opens_without_login_and_says_so(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/ui")
    assert response.status_code == 200
    assert "Auth is off" in response.text
    assert (await api.get("/ui/login")).status_code == 303


async def test_over_https_the_cookie_is_secure(database_url: str) -> None:
    # The login reads no table: the app answers it without its lifespan (no pool).
    app = create_app(make_settings(database_url, **TOKENS))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://dash.example") as client:
        response = await client.post(
            "/ui/login", data={"token": READER}, headers={"Origin": "https://dash.example"}
        )
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


async def test_a_long_input_is_cut_on_the_job_page(api_factory: ApiFactory) -> None:
    async with api_factory(**TOKENS) as client:
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        text = "word " * 2000
        created = await client.post(
            f"{API}/jobs", json=job_body(input={"user": text}), headers=bearer
        )
        await login(client, READER)
        page = await client.get(f"/ui/jobs/{created.json()['id']}")
        assert page.status_code == 200
        assert f"… {len(text)} characters in all (see the API)" in page.text
        assert text not in page.text


async def test_report_pages_name_a_bad_query_and_refuse_a_job_of_another_type(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(**TOKENS) as client:
        job_id = await failed_job(client)  # an llm_chat job
        await login(client, READER)
        empty = await client.get("/ui/reports/transcription")
        assert empty.status_code == 200
        assert "No transcription attempts in this window." in empty.text
        bad = await client.get("/ui/reports/transcription", params={"since": "monday"})
        assert bad.status_code == 400
        assert "Invalid query: since" in bad.text
        backwards = await client.get(
            "/ui/reports/transcription",
            params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        )
        assert backwards.status_code == 400
        assert "the window must end after it starts" in backwards.text
        other = await client.get(f"/ui/reports/transcription/jobs/{job_id}")
        assert other.status_code == 422  # as the API answers it
        assert "not a transcription job" in other.text
        assert (await client.get("/ui/workers")).status_code == 200


async def test_the_overview_splits_each_task_type_into_runnable_scheduled_running_and_failed(
    api: httpx.AsyncClient,
) -> None:
    later = "2999-01-01T00:00:00Z"
    for ref, extra in (("r1", {}), ("r2", {}), ("s1", {"run_after": later})):
        body = job_body(task_type="ov-type", owner_ref=ref, **extra)
        assert (await api.post(f"{API}/jobs", json=body)).status_code == 201
    failing = job_body(task_type="ov-fail", model_profile="ov-profile", max_attempts=1)
    assert (await api.post(f"{API}/jobs", json=failing)).status_code == 201
    claim = await api.post(f"{API}/jobs/claim", json={"worker_id": "w", "task_types": ["ov-fail"]})
    [job] = claim.json()["jobs"]
    failed = await api.post(
        f"{API}/jobs/{job['id']}/fail",
        json={"category": "invalid_input", "message": "no", "lease_token": job["lease_token"]},
    )
    assert failed.json()["status"] == "failed"
    page = (await api.get("/ui")).text
    # Two runnable and one scheduled for later; one failure in the last hour.
    assert 'data-runnable="ov-type">2<' in page
    row = re.search(r'data-runnable="ov-type">2</td><td>(\d+)</td><td>(\d+)</td>', page)
    assert row is not None
    assert row.groups() == ("1", "0")
    assert 'data-failed-1h="ov-fail">1<' in page
    assert 'data-failed-1h="ov-profile">1<' in page
