"""Jobs table, counters and notifications.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE jobs (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_service    text        NOT NULL CHECK (length(owner_service) BETWEEN 1 AND 100),
    owner_ref        text        NOT NULL CHECK (length(owner_ref) BETWEEN 1 AND 500),
    task_type        text        NOT NULL CHECK (length(task_type) BETWEEN 1 AND 100),
    model_profile    text        NOT NULL CHECK (length(model_profile) BETWEEN 1 AND 100),
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    priority         integer     NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    input            jsonb       NOT NULL CHECK (jsonb_typeof(input) = 'object'),
    result           jsonb       CHECK (result IS NULL OR jsonb_typeof(result) = 'object'),
    error_category   text        CHECK (length(error_category) BETWEEN 1 AND 100),
    error_message    text,
    error_details    jsonb
                     CHECK (error_details IS NULL OR jsonb_typeof(error_details) = 'object'),
    errors           jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    attempt          integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- callers set at most 100; each manual retry may add one attempt beyond that
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 1000),
    run_after        timestamptz NOT NULL DEFAULT now(),
    worker_id        text        CHECK (length(worker_id) BETWEEN 1 AND 200),
    lease_token      uuid,
    lease_expires_at timestamptz,
    idempotency_key  text        CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CONSTRAINT jobs_attempts_within_max CHECK (attempt <= max_attempts),
    CONSTRAINT jobs_pending_has_attempt_left CHECK (status <> 'pending' OR attempt < max_attempts),
    CONSTRAINT jobs_lease_iff_running CHECK (
        (status = 'running') = (lease_token IS NOT NULL)
        AND (status = 'running') = (lease_expires_at IS NOT NULL)
    ),
    CONSTRAINT jobs_running_has_worker CHECK (
        status <> 'running' OR (worker_id IS NOT NULL AND started_at IS NOT NULL)
    ),
    CONSTRAINT jobs_finished_iff_terminal CHECK (
        (status IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL)
    ),
    CONSTRAINT jobs_completed_has_result CHECK (status <> 'completed' OR result IS NOT NULL),
    CONSTRAINT jobs_failed_has_category CHECK (status <> 'failed' OR error_category IS NOT NULL)
);

-- A queue table churns: vacuum it early so that dead row versions left by claims and
-- completions do not pile up at the head of the claim indexes.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.01,
                      autovacuum_analyze_scale_factor = 0.02,
                      autovacuum_vacuum_insert_scale_factor = 0.05);

-- claim: pending jobs in priority order (any task type, and per task type)
CREATE INDEX jobs_claim_idx ON jobs (priority DESC, run_after, created_at) WHERE status = 'pending';
CREATE INDEX jobs_claim_type_idx ON jobs (task_type, priority DESC, run_after, created_at)
    WHERE status = 'pending';
-- rescuer: expired leases
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE status = 'running';
-- list: newest first, keyset (created_at, id); with status / owner filters
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status_created_idx ON jobs (status, created_at DESC, id DESC);
CREATE INDEX jobs_owner_idx ON jobs (owner_service, owner_ref, created_at DESC, id DESC);
-- idempotency: one key per owner_service
CREATE UNIQUE INDEX jobs_idempotency_idx ON jobs (owner_service, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- stats over recent windows and retention
CREATE INDEX jobs_finished_idx ON jobs (finished_at) INCLUDE (status, task_type, started_at)
    WHERE finished_at IS NOT NULL;

-- Exact counters by (status, task_type, model_profile, error_category) without
-- scanning the jobs table: statement-level triggers append deltas (no row
-- contention on the hot path); maintenance folds them into job_counts.
CREATE TABLE job_counts (
    status         text   NOT NULL,
    task_type      text   NOT NULL,
    model_profile  text   NOT NULL,
    error_category text   NOT NULL,
    n              bigint NOT NULL,
    PRIMARY KEY (status, task_type, model_profile, error_category)
);

CREATE TABLE job_count_deltas (
    status         text   NOT NULL,
    task_type      text   NOT NULL,
    model_profile  text   NOT NULL,
    error_category text   NOT NULL,
    n              bigint NOT NULL
);

CREATE FUNCTION jobs_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (status, task_type, model_profile, error_category, n)
    SELECT status, task_type, model_profile,
           CASE WHEN status = 'failed' THEN error_category ELSE '' END, count(*)
      FROM new_rows
     GROUP BY 1, 2, 3, 4;
    IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'pending') THEN
        PERFORM pg_notify('ai_service_jobs', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION jobs_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (status, task_type, model_profile, error_category, n)
    SELECT status, task_type, model_profile, error_category, sum(n)
      FROM (SELECT status, task_type, model_profile,
                   CASE WHEN status = 'failed' THEN error_category ELSE '' END AS error_category,
                   1 AS n
              FROM new_rows
            UNION ALL
            SELECT status, task_type, model_profile,
                   CASE WHEN status = 'failed' THEN error_category ELSE '' END,
                   -1
              FROM old_rows) AS d
     GROUP BY 1, 2, 3, 4
    HAVING sum(n) <> 0;
    -- only retry, rescue and retryable failures leave a row pending
    IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'pending') THEN
        PERFORM pg_notify('ai_service_jobs', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION jobs_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (status, task_type, model_profile, error_category, n)
    SELECT status, task_type, model_profile,
           CASE WHEN status = 'failed' THEN error_category ELSE '' END, -count(*)
      FROM old_rows
     GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_after_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_after_insert();
CREATE TRIGGER jobs_after_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_after_update();
CREATE TRIGGER jobs_after_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_after_delete();
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS jobs;
DROP TABLE IF EXISTS job_counts;
DROP TABLE IF EXISTS job_count_deltas;
DROP FUNCTION IF EXISTS jobs_after_insert();
DROP FUNCTION IF EXISTS jobs_after_update();
DROP FUNCTION IF EXISTS jobs_after_delete();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
