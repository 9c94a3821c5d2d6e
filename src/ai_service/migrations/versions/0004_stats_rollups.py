"""Stats from rollups: finished jobs per minute and hour with run-duration buckets;
counters cleared by TRUNCATE.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Upper bounds of the run-duration buckets, in seconds: the set of the process
# histograms in metrics.py, frozen here because a migration must not change when
# the code does. Bucket i (0-based) holds durations in [bound i-1, bound i); the
# last one everything from 3600 s on, so a rollup row has len(BOUNDS) + 1 buckets.
BOUNDS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
BUCKETS = len(BOUNDS) + 1

# One delta row per (minute, task_type, model_profile, outcome) of the rows in `source`
# (a transition table, as `n`) that finished: how many, their summed run duration and
# their count per duration bucket (width_bucket: 0 below the first bound, len(BOUNDS)
# from the last one; a job that never started has no duration and is in no bucket).
# Counted per bucket first, then spread into the array: the 16 FILTERs then run over
# a few groups, not over every row. Rows finished before the rollups' retention are
# left out. Minutes are UTC minutes (date_bin from a UTC midnight: plain arithmetic,
# the same as date_trunc('minute', t, 'UTC') in the queries).
_DELTAS = """
        INSERT INTO job_rollup_deltas (minute, task_type, model_profile, outcome, n,
                                       duration_sum, buckets)
        SELECT minute, task_type, model_profile, outcome, sum(c), sum(s),
               ARRAY[{buckets}]::bigint[]
          FROM (SELECT date_bin('1 minute', f.finished_at, timestamptz '2000-01-01 00:00+00')
                           AS minute,
                       f.task_type, f.model_profile, f.status AS outcome,
                       width_bucket(f.d, job_rollup_bounds()) AS b,
                       count(*) AS c, coalesce(sum(f.d), 0) AS s
                  FROM (SELECT n.finished_at, n.task_type, n.model_profile, n.status,
                               CASE WHEN n.started_at IS NOT NULL
                                    THEN greatest(extract(epoch FROM n.finished_at - n.started_at),
                                                  0)::float8 END AS d
                          FROM {source}
                         WHERE n.status IN ('completed', 'failed')
                           AND n.finished_at >= now() - job_rollups_keep(){condition}) AS f
                 GROUP BY 1, 2, 3, 4, 5) AS g
         GROUP BY 1, 2, 3, 4;
"""
_BUCKET_COUNTS = ",\n                     ".join(
    f"coalesce(sum(c) FILTER (WHERE b = {i}), 0)" for i in range(BUCKETS)
)
# Every finished row counts (it was inserted finished, or no row of the statement
# was finished before it).
ALL_FINISHED = _DELTAS.format(buckets=_BUCKET_COUNTS, source="new_rows n", condition="")
# Only rows whose status changed into completed or failed: a finish is counted
# once, when it happens (an UPDATE of a finished row's other columns is no finish).
CHANGED_INTO_FINISHED = _DELTAS.format(
    buckets=_BUCKET_COUNTS,
    source="new_rows n JOIN old_rows o ON o.id = n.id",
    condition="\n                           AND o.status <> n.status",
)

UPGRADE = rf"""
CREATE FUNCTION job_rollup_bounds() RETURNS float8[] LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT '{{{",".join(str(b) for b in BOUNDS)}}}'::float8[] $$;
-- How long rollups are kept (the retention service deletes older ones).
CREATE FUNCTION job_rollups_keep() RETURNS interval LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT interval '8 days' $$;
-- Element-wise sum of two bucket arrays (NULL is the empty histogram).
CREATE FUNCTION job_buckets_add(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NULL THEN b
                WHEN b IS NULL THEN a
                ELSE ARRAY(SELECT x + y FROM unnest(a, b) WITH ORDINALITY AS u(x, y, i)
                            ORDER BY i) END $$;
CREATE AGGREGATE job_buckets_sum(bigint[]) (SFUNC = job_buckets_add, STYPE = bigint[]);

-- Finished jobs (completed / failed) by the minute they finished in, and by the
-- hour: the stats' 1 h / 24 h figures read a day of hours plus the minutes at its
-- edges, never the jobs table. Triggers only append deltas (no shared row is
-- updated on the hot path); the compaction service folds them in.
CREATE TABLE job_rollups (
    minute        timestamptz      NOT NULL,
    task_type     text             NOT NULL,
    model_profile text             NOT NULL,
    outcome       text             NOT NULL CHECK (outcome IN ('completed', 'failed')),
    n             bigint           NOT NULL,
    duration_sum  double precision NOT NULL,
    buckets       bigint[]         NOT NULL CHECK (cardinality(buckets) = {BUCKETS}),
    PRIMARY KEY (minute, task_type, model_profile, outcome)
);
CREATE TABLE job_rollups_hourly (
    hour          timestamptz      NOT NULL,
    task_type     text             NOT NULL,
    model_profile text             NOT NULL,
    outcome       text             NOT NULL CHECK (outcome IN ('completed', 'failed')),
    n             bigint           NOT NULL,
    duration_sum  double precision NOT NULL,
    buckets       bigint[]         NOT NULL CHECK (cardinality(buckets) = {BUCKETS}),
    PRIMARY KEY (hour, task_type, model_profile, outcome)
);
CREATE TABLE job_rollup_deltas (
    minute        timestamptz      NOT NULL,
    task_type     text             NOT NULL,
    model_profile text             NOT NULL,
    outcome       text             NOT NULL,
    n             bigint           NOT NULL,
    duration_sum  double precision NOT NULL,
    buckets       bigint[]         NOT NULL
);

-- Rows inserted already finished (imports, benchmarks) count when inserted.
CREATE FUNCTION jobs_rollups_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE status IN ('completed', 'failed')) THEN
{ALL_FINISHED}
    END IF;
    RETURN NULL;
END $$;

-- Claims and heartbeats finish nothing: the first EXISTS skips them after one pass over
-- the statement's rows. Completions and failures come from running (or pending) rows:
-- no old row was finished, so no row needs pairing with its old version.
CREATE FUNCTION jobs_rollups_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE status IN ('completed', 'failed')) THEN
        IF EXISTS (SELECT 1 FROM old_rows WHERE status IN ('completed', 'failed')) THEN
{CHANGED_INTO_FINISHED}
        ELSE
{ALL_FINISHED}
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_rollups_after_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_rollups_after_insert();
CREATE TRIGGER jobs_rollups_after_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_rollups_after_update();

-- TRUNCATE fires no row or DELETE trigger: without this the counters would keep
-- counting jobs that are gone. The compaction statements' advisory locks are
-- taken first, so a fold in flight finishes before the tables are cleared (and
-- none starts until this commits); TRUNCATE already holds the jobs table, so no
-- writer can add deltas meanwhile. DELETE rather than TRUNCATE, so readers of the
-- counters are not blocked.
CREATE FUNCTION jobs_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1095324502);
    PERFORM pg_advisory_xact_lock(1095324503);
    DELETE FROM job_count_deltas;
    DELETE FROM job_counts;
    DELETE FROM job_rollup_deltas;
    DELETE FROM job_rollups;
    DELETE FROM job_rollups_hourly;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_after_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_after_truncate();

-- Stats no longer scan finished jobs by finish time; retention has its own
-- per-status indexes (0003).
DROP INDEX jobs_finished_idx;
"""

DOWNGRADE = r"""
CREATE INDEX jobs_finished_idx ON jobs (finished_at) INCLUDE (status, task_type, started_at)
    WHERE finished_at IS NOT NULL;
DROP TRIGGER IF EXISTS jobs_after_truncate ON jobs;
DROP FUNCTION IF EXISTS jobs_after_truncate();
DROP TRIGGER IF EXISTS jobs_rollups_after_update ON jobs;
DROP TRIGGER IF EXISTS jobs_rollups_after_insert ON jobs;
DROP FUNCTION IF EXISTS jobs_rollups_after_update();
DROP FUNCTION IF EXISTS jobs_rollups_after_insert();
DROP TABLE IF EXISTS job_rollup_deltas;
DROP TABLE IF EXISTS job_rollups_hourly;
DROP TABLE IF EXISTS job_rollups;
DROP AGGREGATE IF EXISTS job_buckets_sum(bigint[]);
DROP FUNCTION IF EXISTS job_buckets_add(bigint[], bigint[]);
DROP FUNCTION IF EXISTS job_rollups_keep();
DROP FUNCTION IF EXISTS job_rollup_bounds();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
