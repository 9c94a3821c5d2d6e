"""Outage budget: when a job first met a provider outage since it last made progress.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Nullable, no default: adding it rewrites nothing (a catalog change only), whatever
# the table holds. Set by job_defer, cleared by a completion and by a manual retry.
UPGRADE = """
ALTER TABLE jobs ADD COLUMN outage_since timestamptz;
-- The rescuer fails pending jobs whose outage outlived PROVIDER_OUTAGE_MAX (held back by
-- an open breaker, they are not claimed to meet it): read oldest first from here, a
-- small index (only jobs waiting out an outage have an entry).
CREATE INDEX jobs_outage_idx ON jobs (outage_since)
    WHERE status = 'pending' AND outage_since IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX IF EXISTS jobs_outage_idx;
ALTER TABLE jobs DROP COLUMN IF EXISTS outage_since;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
