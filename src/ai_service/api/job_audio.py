"""Transcription jobs' audio kept out of the job rows, at create time.

For each new job of a transcription task type whose input names its audio
inline (`audio_base64` and no other source), the bytes go to the audio table
(`Store.put_audio`, keyed by content) and the stored input names `audio_id`
instead. An `audio_id` given by the caller must name a complete recording of
the job's own owner_service (422 otherwise, the same answer for another
owner's recording as for a missing one). Other task types are left alone:
their input belongs to the caller and its worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

from ai_service import audio_input, errors
from ai_service.jobs import NewJob
from ai_service.store import Store
from ai_service.worker.registry import TRANSCRIPTION_TASK_TYPES


async def keep_audio_apart(
    store: Store, jobs: Sequence[NewJob], fields: Sequence[str], *, max_bytes: int
) -> list[NewJob]:
    """`jobs` with inline audio moved to the audio table and every `audio_id` checked.

    `fields[i]` names job i's input in messages (`input`, `jobs[3].input`).
    Raises `InvalidRequest` (422) or `PayloadTooLarge` (413) naming the field.
    """
    moved: dict[tuple[str, str], str] = {}  # (owner, base64 text) -> audio_id: batch defaults
    refs: dict[tuple[UUID, str], str] = {}  # caller-given (audio_id, owner) -> field
    out: list[NewJob] = []
    for job, field in zip(jobs, fields, strict=True):
        if job.task_type not in TRANSCRIPTION_TASK_TYPES:
            out.append(job)
            continue
        given = [name for name in audio_input.SOURCES if job.input.get(name) is not None]
        if "audio_id" in job.input:
            try:
                audio_id = audio_input.parse_audio_id(job.input["audio_id"])
            except audio_input.BadAudioInput as exc:
                raise errors.InvalidRequest(f"{field}.audio_id", str(exc)) from None
            refs.setdefault((audio_id, job.owner_service), f"{field}.audio_id")
            out.append(job)
            continue
        text = job.input.get("audio_base64")
        if given != ["audio_base64"] or not isinstance(text, str):
            out.append(job)  # no inline audio, or an invalid combination: the worker says so
            continue
        key = (job.owner_service, text)
        if key not in moved:
            moved[key] = str(await _store(store, job, text, f"{field}.audio_base64", max_bytes))
        out.append(replace(job, input=_with_audio_id(job.input, moved[key])))
    if refs:
        found = await store.use_audio(list(refs))
        missing = [name for ref, name in refs.items() if ref not in found]
        if missing:
            raise errors.InvalidRequest(
                missing[0],
                "names no stored recording of this owner_service "
                "(upload it with POST /api/v1/audio; unused recordings expire)",
            )
    return out


async def _store(store: Store, job: NewJob, text: str, field: str, max_bytes: int) -> UUID:
    try:
        data = audio_input.decode_base64(text, max_bytes)
    except audio_input.AudioTooLarge as exc:
        raise errors.PayloadTooLarge(field, exc.limit, "AUDIO_MAX_BYTES") from None
    except audio_input.BadAudioInput as exc:
        raise errors.InvalidRequest(field, str(exc)) from None
    content_type = audio_input.content_type(job.input.get("audio_format"))
    blob = await store.put_audio(job.owner_service, content_type, data)
    return blob.id


def _with_audio_id(job_input: dict[str, Any], audio_id: str) -> dict[str, Any]:
    # The same keys in the same order, the base64 replaced by the id.
    return {
        ("audio_id" if key == "audio_base64" else key): (
            audio_id if key == "audio_base64" else value
        )
        for key, value in job_input.items()
    }
