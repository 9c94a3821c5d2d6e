"""Completion webhooks: a callback URL and a trace context per job, and the outbox of
deliveries written by the state change itself.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-12
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Nullable, no default: catalogue changes only, whatever the table holds. The CHECKs
-- are NOT VALID (no scan of the existing rows, all NULL anyway); they hold for every
-- row written from now on.
ALTER TABLE jobs ADD COLUMN callback_url text;
ALTER TABLE jobs ADD COLUMN traceparent text;
ALTER TABLE jobs ADD CONSTRAINT jobs_callback_url_length
    CHECK (length(callback_url) BETWEEN 1 AND 2048) NOT VALID;
ALTER TABLE jobs ADD CONSTRAINT jobs_traceparent_format
    CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$') NOT VALID;

-- One row per event to deliver (the outbox). `id` is the event's webhook-id (sent as
-- msg_<32 hex digits>), the same on every attempt. `payload` is fixed when the event
-- happens. No foreign key to jobs: `TRUNCATE jobs` must keep working (the truncate
-- trigger below clears the outbox instead) and retention deletes a job's deliveries
-- in the statement that deletes the job (job_prune_finished).
CREATE TABLE webhook_deliveries (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id          uuid        NOT NULL,
    event_type      text        NOT NULL,
    url             text        NOT NULL,
    payload         jsonb       NOT NULL,
    traceparent     text,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text,
    -- the newest attempts (number, time, HTTP status or error, duration), oldest first
    attempt_log     jsonb       NOT NULL DEFAULT '[]',
    CHECK ((status = 'delivered') = (delivered_at IS NOT NULL))
);
-- The deliverer reads the due pending deliveries only; finished ones leave the index.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
-- A job's deliveries (GET /jobs/{id}/deliveries, retention).
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id);

-- The event of a terminal transition, in the transaction of the transition: it exists
-- if and only if the state change committed. A row trigger whose WHEN clause is
-- tested without calling any function: jobs without a callback pay nothing more.
-- `timestamp` is the state change's time (finished_at), ISO 8601 in UTC.
CREATE FUNCTION jobs_webhook_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (job_id, event_type, url, payload, traceparent)
    VALUES (NEW.id, 'job.' || NEW.status, NEW.callback_url,
            jsonb_build_object(
                'type', 'job.' || NEW.status,
                'job_id', NEW.id,
                'owner_service', NEW.owner_service,
                'owner_ref', NEW.owner_ref,
                'status', NEW.status,
                'timestamp', to_char(coalesce(NEW.finished_at, now()) AT TIME ZONE 'UTC',
                                     'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
            NEW.traceparent);
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_webhook_event AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.callback_url IS NOT NULL)
    EXECUTE FUNCTION jobs_webhook_event();

-- TRUNCATE jobs takes the jobs' events with them.
CREATE FUNCTION jobs_webhooks_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_deliveries;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_webhooks_after_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_webhooks_after_truncate();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS jobs_webhooks_after_truncate ON jobs;
DROP FUNCTION IF EXISTS jobs_webhooks_after_truncate();
DROP TRIGGER IF EXISTS jobs_webhook_event ON jobs;
DROP FUNCTION IF EXISTS jobs_webhook_event();
DROP TABLE IF EXISTS webhook_deliveries;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_traceparent_format;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_callback_url_length;
ALTER TABLE jobs DROP COLUMN IF EXISTS traceparent;
ALTER TABLE jobs DROP COLUMN IF EXISTS callback_url;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
