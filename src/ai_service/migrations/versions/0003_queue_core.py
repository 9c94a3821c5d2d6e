"""Queue core at scale: index-driven claim, HOT heartbeats, leaner writes, wake-ups
per task type, per-claim lease length, job deadlines, idempotent repeats.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Claim: one index over pending jobs, per (task_type, model_profile), then priority
-- levels. The claim statement walks the pairs and priority levels present and reads
-- each level's runnable range (run_after <= now()), so neither the backlog of another
-- type or profile nor jobs scheduled in the future are ever scanned.
DROP INDEX jobs_claim_idx;
DROP INDEX jobs_claim_type_idx;
CREATE INDEX jobs_claim_idx ON jobs (task_type, model_profile, priority DESC, run_after, id)
    WHERE status = 'pending';
-- The oldest runnable job, and how many are scheduled for later (stats).
CREATE INDEX jobs_pending_run_after_idx ON jobs (run_after) WHERE status = 'pending';

-- Heartbeats: the lease expiry is no index key any more, and pages keep room, so a
-- heartbeat is a HOT update (no index entry written). The rescuer reads the running
-- jobs (at most the workers' total concurrency) from a partial index whose key never
-- changes while a job runs.
DROP INDEX jobs_lease_idx;
CREATE INDEX jobs_running_idx ON jobs (worker_id) WHERE status = 'running';
ALTER TABLE jobs SET (fillfactor = 90);

-- Lists: ids are UUIDv7 (time-ordered), so newest first is id order. The primary key
-- serves the unfiltered list; the filtered ones end in id.
DROP INDEX jobs_created_idx;
DROP INDEX jobs_status_created_idx;
DROP INDEX jobs_owner_idx;
CREATE INDEX jobs_status_idx ON jobs (status, id);
CREATE INDEX jobs_owner_idx ON jobs (owner_service, owner_ref, id);

-- Retention: each status class read oldest first from its own index.
CREATE INDEX jobs_done_finished_idx ON jobs (finished_at)
    WHERE status IN ('completed', 'cancelled');
CREATE INDEX jobs_failed_finished_idx ON jobs (finished_at) WHERE status = 'failed';

-- Payload shapes are checked when a payload is written, not on every UPDATE of the
-- row (a CHECK re-reads a TOASTed 4 MB input on each heartbeat).
ALTER TABLE jobs DROP CONSTRAINT jobs_input_check,
                 DROP CONSTRAINT jobs_result_check,
                 DROP CONSTRAINT jobs_error_details_check,
                 DROP CONSTRAINT jobs_errors_check;
CREATE FUNCTION jobs_check_payloads() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND jsonb_typeof(NEW.input) <> 'object' THEN
        RAISE check_violation USING CONSTRAINT = 'jobs_input_check',
            MESSAGE = 'input must be a JSON object';
    END IF;
    IF NEW.result IS NOT NULL AND jsonb_typeof(NEW.result) <> 'object' THEN
        RAISE check_violation USING CONSTRAINT = 'jobs_result_check',
            MESSAGE = 'result must be a JSON object';
    END IF;
    IF NEW.error_details IS NOT NULL AND jsonb_typeof(NEW.error_details) <> 'object' THEN
        RAISE check_violation USING CONSTRAINT = 'jobs_error_details_check',
            MESSAGE = 'error_details must be a JSON object';
    END IF;
    IF jsonb_typeof(NEW.errors) <> 'array' THEN
        RAISE check_violation USING CONSTRAINT = 'jobs_errors_check',
            MESSAGE = 'errors must be a JSON array';
    END IF;
    RETURN NEW;
END $$;
-- UPDATE OF: fires only for statements that set one of these columns.
CREATE TRIGGER jobs_check_payloads BEFORE INSERT OR UPDATE OF result, error_details, errors
    ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_check_payloads();

-- Leases: the length a claim asked for (a heartbeat without a length extends by it),
-- and a per-job deadline for one attempt.
ALTER TABLE jobs ADD COLUMN lease_seconds real
    CONSTRAINT jobs_lease_seconds_positive CHECK (lease_seconds > 0);
ALTER TABLE jobs ADD COLUMN timeout_seconds integer
    CONSTRAINT jobs_timeout_seconds_range CHECK (timeout_seconds BETWEEN 1 AND 604800);
-- A finished (or retried) job keeps the token of its last attempt, so that a repeated
-- complete/fail of that attempt (a lost reply) is recognised and answered as done.
ALTER TABLE jobs DROP CONSTRAINT jobs_lease_iff_running;
ALTER TABLE jobs ADD CONSTRAINT jobs_lease_iff_running CHECK (
    (status = 'running') = (lease_expires_at IS NOT NULL)
    AND (status <> 'running' OR lease_token IS NOT NULL));

-- Wake-ups leave the triggers: the application notifies per task type, after commit
-- and debounced, only for jobs runnable now (see notifier.py).
CREATE OR REPLACE FUNCTION jobs_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (status, task_type, model_profile, error_category, n)
    SELECT status, task_type, model_profile,
           CASE WHEN status = 'failed' THEN error_category ELSE '' END, count(*)
      FROM new_rows
     GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION jobs_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END $$;
"""

DOWNGRADE = r"""
-- The wake-ups go back into the triggers (as in 0001).
CREATE OR REPLACE FUNCTION jobs_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
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
CREATE OR REPLACE FUNCTION jobs_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'pending') THEN
        PERFORM pg_notify('ai_service_jobs', '');
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS jobs_check_payloads ON jobs;
DROP FUNCTION IF EXISTS jobs_check_payloads();
ALTER TABLE jobs DROP CONSTRAINT jobs_lease_iff_running;
UPDATE jobs SET lease_token = NULL WHERE status <> 'running';
ALTER TABLE jobs ADD CONSTRAINT jobs_lease_iff_running CHECK (
    (status = 'running') = (lease_token IS NOT NULL)
    AND (status = 'running') = (lease_expires_at IS NOT NULL));
ALTER TABLE jobs DROP COLUMN IF EXISTS timeout_seconds;
ALTER TABLE jobs DROP COLUMN IF EXISTS lease_seconds;
ALTER TABLE jobs ADD CONSTRAINT jobs_input_check CHECK (jsonb_typeof(input) = 'object');
ALTER TABLE jobs ADD CONSTRAINT jobs_result_check
    CHECK (result IS NULL OR jsonb_typeof(result) = 'object');
ALTER TABLE jobs ADD CONSTRAINT jobs_error_details_check
    CHECK (error_details IS NULL OR jsonb_typeof(error_details) = 'object');
ALTER TABLE jobs ADD CONSTRAINT jobs_errors_check CHECK (jsonb_typeof(errors) = 'array');
DROP INDEX IF EXISTS jobs_done_finished_idx;
DROP INDEX IF EXISTS jobs_failed_finished_idx;
DROP INDEX IF EXISTS jobs_status_idx;
DROP INDEX IF EXISTS jobs_owner_idx;
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status_created_idx ON jobs (status, created_at DESC, id DESC);
CREATE INDEX jobs_owner_idx ON jobs (owner_service, owner_ref, created_at DESC, id DESC);
DROP INDEX IF EXISTS jobs_running_idx;
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE status = 'running';
ALTER TABLE jobs RESET (fillfactor);
DROP INDEX IF EXISTS jobs_pending_run_after_idx;
DROP INDEX jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON jobs (priority DESC, run_after, created_at) WHERE status = 'pending';
CREATE INDEX jobs_claim_type_idx ON jobs (task_type, priority DESC, run_after, created_at)
    WHERE status = 'pending';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
