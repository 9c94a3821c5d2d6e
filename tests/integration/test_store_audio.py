"""Store: recordings kept apart from the job rows (audio_blobs / audio_chunks)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from uuid import UUID

import pytest

from ai_service import errors
from ai_service.store import AUDIO_CHUNK_BYTES, Store
from tests.helpers import new_job


async def pieces(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`data` as a client would stream it: in small pieces."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def chunk_rows(store: Store, audio_id: UUID) -> list[int]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT octet_length(data) AS n FROM audio_chunks WHERE audio_id = %s ORDER BY n",
            (audio_id,),
        )
        return [row["n"] for row in await cur.fetchall()]


async def test_an_upload_is_stored_in_chunks_and_read_back_in_order(store: Store) -> None:
    data = os.urandom(2 * AUDIO_CHUNK_BYTES + 12345)

    blob = await store.upload_audio("telephony", "audio/wav", pieces(data), max_bytes=10**8)

    assert blob.size == len(data)
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert (blob.owner_service, blob.content_type) == ("telephony", "audio/wav")
    assert sorted(await chunk_rows(store, blob.id)) == [12345, AUDIO_CHUNK_BYTES, AUDIO_CHUNK_BYTES]
    read = [chunk async for chunk in store.audio_chunks(blob.id)]
    assert [len(c) for c in read] == [AUDIO_CHUNK_BYTES, AUDIO_CHUNK_BYTES, 12345]
    assert b"".join(read) == data
    assert await store.get_audio(blob.id) == blob


async def test_an_upload_over_the_limit_or_empty_leaves_nothing(store: Store) -> None:
    with pytest.raises(errors.PayloadTooLarge) as too_large:
        await store.upload_audio(
            "telephony", "audio/wav", pieces(os.urandom(AUDIO_CHUNK_BYTES * 2)), max_bytes=10**6
        )
    assert too_large.value.details == {
        "field": "body",
        "limit_bytes": 10**6,
        "setting": "AUDIO_MAX_BYTES",
    }
    with pytest.raises(errors.InvalidRequest, match="body: the audio is empty"):
        await store.upload_audio("telephony", "audio/wav", pieces(b""), max_bytes=10**6)
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM audio_blobs) + (SELECT count(*) FROM audio_chunks) AS n"
        )
        assert (await cur.fetchone())["n"] == 0


async def test_inline_audio_is_stored_once_per_owner_and_content(store: Store) -> None:
    data = os.urandom(AUDIO_CHUNK_BYTES + 1)

    first = await store.put_audio("telephony", "audio/wav", data)
    again = await store.put_audio("telephony", "audio/wav", data)
    other = await store.put_audio("crm", "audio/wav", data)

    assert first.id == again.id != other.id
    assert len(await chunk_rows(store, first.id)) == 2
    assert b"".join([c async for c in store.audio_chunks(first.id)]) == data


async def test_use_audio_finds_only_complete_recordings_of_the_same_owner(store: Store) -> None:
    blob = await store.put_audio("telephony", "audio/wav", b"RIFF....")
    unfinished = UUID("01900000-0000-7000-8000-000000000001")
    async with store.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO audio_blobs (id, owner_service, content_type) VALUES (%s, %s, %s)",
            (unfinished, "telephony", "audio/wav"),
        )

    found = await store.use_audio(
        [(blob.id, "telephony"), (blob.id, "crm"), (unfinished, "telephony")]
    )

    assert found == {(blob.id, "telephony")}
    with pytest.raises(errors.AudioNotFound):
        await store.get_audio(unfinished)


async def test_retention_keeps_recordings_that_unfinished_jobs_name(store: Store) -> None:
    named = await store.put_audio("telephony", "audio/wav", b"named by a pending job")
    unused = await store.put_audio("telephony", "audio/wav", b"named by nobody")
    fresh = await store.put_audio("telephony", "audio/wav", b"used a moment ago")
    [created] = await store.create_jobs(
        [new_job(task_type="transcription", input={"audio_id": str(named.id)})]
    )
    async with store.pool.connection() as conn:
        await conn.execute(
            "UPDATE audio_blobs SET used_at = now() - interval '8 days' WHERE id = ANY(%s)",
            ([named.id, unused.id],),
        )
        await conn.execute(
            "INSERT INTO audio_blobs (id, owner_service, content_type, created_at, used_at)"
            " VALUES (%s, 'telephony', 'audio/wav', now() - interval '2 days', now())",
            (UUID("01900000-0000-7000-8000-000000000002"),),
        )

    deleted = await store.prune_audio(7 * 86400.0)

    # The unused one and the abandoned upload went; the named and the fresh one stay.
    assert deleted == (2, len(b"named by nobody"))
    await store.get_audio(named.id)
    await store.get_audio(fresh.id)
    with pytest.raises(errors.AudioNotFound):
        await store.get_audio(unused.id)
    # Once its job is finished, the recording is no longer held.
    await store.cancel(created.job.id)
    assert await store.prune_audio(7 * 86400.0) == (1, len(b"named by a pending job"))
    assert await chunk_rows(store, named.id) == []
