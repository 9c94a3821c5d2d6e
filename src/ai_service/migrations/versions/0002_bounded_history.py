"""Bounded error history with a failure count; request fingerprints for idempotency keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# 20 is jobs.ERRORS_KEPT when this revision was written (a migration never changes).
UPGRADE = r"""
-- Every failed attempt counts here; `errors` keeps only the newest entries.
-- A constant default: PostgreSQL adds the column without rewriting the table.
ALTER TABLE jobs ADD COLUMN error_count integer NOT NULL DEFAULT 0
    CONSTRAINT jobs_error_count_not_negative CHECK (error_count >= 0);

-- SHA-256 (hex) of the create request of a job with an idempotency key: a repeat with
-- another request is a conflict. NULL for jobs without a key (and for older rows).
ALTER TABLE jobs ADD COLUMN request_hash text
    CONSTRAINT jobs_request_hash_is_sha256 CHECK (request_hash ~ '^[0-9a-f]{64}$');

UPDATE jobs
   SET error_count = jsonb_array_length(errors),
       errors = (SELECT coalesce(jsonb_agg(h.e ORDER BY h.n), '[]'::jsonb)
                   FROM jsonb_array_elements(jobs.errors) WITH ORDINALITY AS h(e, n)
                  WHERE h.n > jsonb_array_length(jobs.errors) - 20)
 WHERE errors <> '[]'::jsonb;
"""

DOWNGRADE = r"""
ALTER TABLE jobs DROP COLUMN IF EXISTS request_hash;
ALTER TABLE jobs DROP COLUMN IF EXISTS error_count;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
