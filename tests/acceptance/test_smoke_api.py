import httpx

from tests.helpers import job_body


async def test_create_over_http_returns_201_and_pending(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/jobs", json=job_body())
    assert response.status_code == 201
    assert response.json()["status"] == "pending"
