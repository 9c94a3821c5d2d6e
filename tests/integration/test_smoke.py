from ai_service.store import Store
from tests.helpers import new_job


async def test_create_then_get_returns_the_same_job(store: Store) -> None:
    [created] = await store.create_jobs([new_job()])
    assert created.created
    fetched = await store.get_job(created.job.id)
    assert fetched == created.job
