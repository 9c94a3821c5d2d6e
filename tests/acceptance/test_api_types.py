"""Values of the wrong JSON type are refused, not coerced."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import job_body

API = "/api/v1"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/jobs", job_body(run_after=0), "run_after"),
        ("/jobs", job_body(run_after=1.5), "run_after"),
        ("/jobs", job_body(priority=True), "priority"),
        ("/jobs/cancel", {"all": 0, "owner_service": "zzz"}, "all"),
        ("/jobs/claim", {"worker_id": "w", "wait_seconds": False}, "wait_seconds"),
        ("/jobs/claim", {"worker_id": "w", "limit": True}, "limit"),
    ],
)
async def test_coercible_values_of_the_wrong_type_are_422(
    api: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    response = await api.post(f"{API}{path}", json=body)
    assert response.status_code == 422
    assert response.json()["message"].startswith(f"{field}:")
    assert (await api.get(f"{API}/stats")).json()["total"] == 0


async def test_numeric_created_before_in_a_list_is_422(api: httpx.AsyncClient) -> None:
    response = await api.get(f"{API}/jobs", params={"created_before": "0.5"})
    assert response.status_code == 422
    assert response.json()["message"].startswith("created_before:")


async def test_a_run_after_offset_beyond_postgres_range_is_stored_in_utc(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post(f"{API}/jobs", json=job_body(run_after="2030-02-28T12:00:00+16:00"))
    assert response.status_code == 201
    assert response.json()["run_after"] == "2030-02-27T20:00:00Z"
