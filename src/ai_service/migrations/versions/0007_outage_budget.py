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
"""

DOWNGRADE = """
ALTER TABLE jobs DROP COLUMN IF EXISTS outage_since;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
