"""The transcription A/B report: one row per provider attempt of each completed
transcription job, and hourly rollups of them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-15
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The transcription task types (worker.registry.TRANSCRIPTION_TASK_TYPES), frozen here
# because a migration must not change when the code does; a test keeps them equal.
TASK_TYPES = ("transcribe", "transcription")
# Upper bounds of the attempt-duration buckets in milliseconds: 100 ms x 1.25^k up to
# two hours, so an interpolated percentile is off by at most a quarter of its value.
# Bucket i holds durations in [bound i-1, bound i); the last one everything above.
BOUNDS = tuple(round(100 * 1.25**k) for k in range(51))
BUCKETS = len(BOUNDS) + 1
# The fold's transaction lock, distinct from the counters' and rollups' (0004).
FOLD_LOCK = 1095324520

UPGRADE = rf"""
CREATE FUNCTION transcription_duration_bounds() RETURNS float8[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT '{{{",".join(str(b) for b in BOUNDS)}}}'::float8[] $$;
-- How long the hourly rollups are kept: the report's longest window (31 days) and a day.
CREATE FUNCTION transcription_rollups_keep() RETURNS interval LANGUAGE sql IMMUTABLE
    PARALLEL SAFE AS $$ SELECT interval '32 days' $$;
-- A JSON number as float8, or NULL for anything else (a string, a negative or absurd
-- value): a result written by an external worker must never make its completion fail.
CREATE FUNCTION transcription_number(v jsonb) RETURNS float8 LANGUAGE sql IMMUTABLE
    PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'number'
                THEN CASE WHEN v::numeric >= 0 AND v::numeric < 1e12 THEN v::float8 END
           END $$;
-- Per-bucket counts (bucket numbers `b`, counts `n`) as one bucket array.
CREATE FUNCTION transcription_buckets(b integer[], n bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(coalesce((SELECT sum(x.n) FROM unnest(b, n) AS x(b, n) WHERE x.b = i),
                              0)::bigint ORDER BY i)
      FROM generate_series(0, cardinality(transcription_duration_bounds())) AS i $$;

-- One row per entry of a completed transcription job's `result.attempts`, written in
-- the completion's transaction. `wer` is the attempt's word error rate against the
-- job's reference (the selected attempt: the first provider that succeeded), as the
-- worker computed it; the reference row carries the job's `disagreement` (the largest
-- `wer` of its other attempts). No foreign key to jobs: `TRUNCATE jobs` must keep
-- working (the truncate trigger clears this table) and retention deletes a job's rows
-- in the statement that deletes the job (job_prune_finished).
CREATE TABLE transcription_attempts (
    job_id        uuid             NOT NULL,
    position      smallint         NOT NULL,
    owner_service text             NOT NULL,
    finished_at   timestamptz      NOT NULL,
    provider      text             NOT NULL,
    model         text             NOT NULL,
    status        text             NOT NULL CHECK (status IN ('ok', 'error', 'skipped')),
    duration_ms   double precision,
    audio_seconds double precision,
    wer           double precision,
    is_reference  boolean          NOT NULL,
    disagreement  double precision,
    PRIMARY KEY (job_id, position)
);
-- The report's partial hours at the window's edges: an index-only range scan.
CREATE INDEX transcription_attempts_finished_idx ON transcription_attempts (finished_at)
    INCLUDE (owner_service, provider, model, status, duration_ms, audio_seconds, wer,
             is_reference);
-- The jobs whose providers disagree most: only jobs with something to compare (their
-- reference rows), read index-only.
CREATE INDEX transcription_attempts_disagreement_idx ON transcription_attempts (finished_at)
    INCLUDE (owner_service, disagreement, job_id) WHERE disagreement IS NOT NULL;

-- Attempts by UTC hour, owner_service, provider and model. `attempts` counts ok and
-- error (a skipped provider made no attempt); the RTF sums cover ok attempts of audio
-- with a known length; `buckets` counts the ok attempts' durations (bounds:
-- transcription_duration_bounds()). Written by the fold only, from the deltas.
CREATE TABLE transcription_rollups (
    hour          timestamptz      NOT NULL,
    owner_service text             NOT NULL,
    provider      text             NOT NULL,
    model         text             NOT NULL,
    attempts      bigint           NOT NULL,
    ok            bigint           NOT NULL,
    skipped       bigint           NOT NULL,
    reference     bigint           NOT NULL,
    rtf_ms        double precision NOT NULL,
    rtf_audio     double precision NOT NULL,
    wer_sum       double precision NOT NULL,
    wer_n         bigint           NOT NULL,
    buckets       bigint[]         NOT NULL CHECK (cardinality(buckets) = {BUCKETS}),
    PRIMARY KEY (hour, owner_service, provider, model)
);
-- The trigger appends one row per attempt here (no shared row is updated on the
-- completion path); the compaction service folds them into transcription_rollups.
CREATE TABLE transcription_rollup_deltas (
    hour          timestamptz      NOT NULL,
    owner_service text             NOT NULL,
    provider      text             NOT NULL,
    model         text             NOT NULL,
    status        text             NOT NULL,
    duration_ms   double precision,
    audio_seconds double precision,
    wer           double precision,
    is_reference  boolean          NOT NULL
);

-- Copies JSON fields only (the word error rates come computed in the result). Bounded:
-- at most 32 attempts, provider and model names cut to 100 and 200 characters.
CREATE FUNCTION jobs_transcription_report() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH a AS (
        SELECT (e.ord - 1)::smallint AS position,
               left(e.a->>'provider', 100) AS provider,
               left(coalesce(e.a->>'model', ''), 200) AS model,
               e.a->>'status' AS status,
               transcription_number(e.a->'duration_ms') AS duration_ms,
               transcription_number(e.a->'wer') AS wer,
               coalesce(e.a->'selected' = 'true'::jsonb, false) AND e.a->>'status' = 'ok'
                   AS is_reference
          FROM jsonb_array_elements(CASE WHEN jsonb_typeof(NEW.result->'attempts') = 'array'
                                         THEN NEW.result->'attempts' ELSE '[]' END)
               WITH ORDINALITY AS e(a, ord)
         WHERE e.ord <= 32
           AND jsonb_typeof(e.a) = 'object'
           AND jsonb_typeof(e.a->'provider') = 'string'
           AND e.a->>'status' IN ('ok', 'error', 'skipped')
    ), compared AS (
        SELECT position, provider, model, status, duration_ms, is_reference,
               CASE WHEN status = 'ok' AND NOT is_reference THEN wer END AS wer
          FROM a
    ), written AS (
        INSERT INTO transcription_attempts
               (job_id, position, owner_service, finished_at, provider, model, status,
                duration_ms, audio_seconds, wer, is_reference, disagreement)
        SELECT NEW.id, c.position, NEW.owner_service, coalesce(NEW.finished_at, now()),
               c.provider, c.model, c.status, c.duration_ms,
               transcription_number(NEW.result->'audio_duration'), c.wer, c.is_reference,
               CASE WHEN c.is_reference THEN (SELECT max(o.wer) FROM compared o) END
          FROM compared c
            ON CONFLICT DO NOTHING
        RETURNING *
    )
    INSERT INTO transcription_rollup_deltas
           (hour, owner_service, provider, model, status, duration_ms, audio_seconds, wer,
            is_reference)
    SELECT date_trunc('hour', finished_at, 'UTC'), owner_service, provider, model, status,
           duration_ms, audio_seconds, wer, is_reference
      FROM written;
    RETURN NULL;
END $$;

-- Row triggers whose WHEN is tested without calling any function: other task types,
-- results without attempts (and every claim, heartbeat or failure) pay nothing more.
CREATE TRIGGER jobs_transcription_report AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.status = 'completed' AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.task_type IN ('{"', '".join(TASK_TYPES)}') AND NEW.result ? 'attempts')
    EXECUTE FUNCTION jobs_transcription_report();
-- Rows inserted already completed (imports, benchmarks) count when inserted.
CREATE TRIGGER jobs_transcription_report_insert AFTER INSERT ON jobs
    FOR EACH ROW
    WHEN (NEW.status = 'completed' AND NEW.task_type IN ('{"', '".join(TASK_TYPES)}')
          AND NEW.result ? 'attempts')
    EXECUTE FUNCTION jobs_transcription_report();

-- TRUNCATE jobs takes the report's rows with it. The fold's lock first, so a fold in
-- flight finishes before the tables are cleared.
CREATE FUNCTION jobs_transcription_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({FOLD_LOCK});
    DELETE FROM transcription_attempts;
    DELETE FROM transcription_rollup_deltas;
    DELETE FROM transcription_rollups;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_transcription_after_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_transcription_after_truncate();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS jobs_transcription_after_truncate ON jobs;
DROP FUNCTION IF EXISTS jobs_transcription_after_truncate();
DROP TRIGGER IF EXISTS jobs_transcription_report_insert ON jobs;
DROP TRIGGER IF EXISTS jobs_transcription_report ON jobs;
DROP FUNCTION IF EXISTS jobs_transcription_report();
DROP TABLE IF EXISTS transcription_rollup_deltas;
DROP TABLE IF EXISTS transcription_rollups;
DROP TABLE IF EXISTS transcription_attempts;
DROP FUNCTION IF EXISTS transcription_buckets(integer[], bigint[]);
DROP FUNCTION IF EXISTS transcription_number(jsonb);
DROP FUNCTION IF EXISTS transcription_rollups_keep();
DROP FUNCTION IF EXISTS transcription_duration_bounds();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
