"""The worker registry: one row per worker process, written by the worker itself.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-20
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- One small row per worker (no history): who it is, when it was last seen, and a
-- bounded snapshot of what it does (`status`: handlers, slots, circuit breakers,
-- jobs in flight, stopping). Each worker upserts its own row every few seconds
-- (WORKER_REGISTRY_INTERVAL), marks it stopped at a graceful stop, and retention
-- deletes the rows not seen for an hour. Nothing in it is a secret: URLs are shown
-- as `/worker/status` shows them (credentials removed).
CREATE TABLE workers (
    worker_id  text        PRIMARY KEY CHECK (length(worker_id) BETWEEN 1 AND 200),
    hostname   text        NOT NULL CHECK (length(hostname) <= 255),
    pid        integer     NOT NULL,
    version    text        NOT NULL CHECK (length(version) <= 64),
    started_at timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz,
    -- bounded by the writer; the CHECK is the backstop against a runaway snapshot
    status     jsonb       NOT NULL DEFAULT '{}'
               CHECK (jsonb_typeof(status) = 'object' AND pg_column_size(status) <= 65536)
) WITH (fillfactor = 50);
-- No index but the key: the table holds a row per worker of the last hour, read whole
-- by the list and by retention, and an index on last_seen (written every few seconds)
-- would keep its updates from being HOT (free page space, the fillfactor, lets them be).
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS workers;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
