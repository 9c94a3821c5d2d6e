"""Exact job counters per owner_service: the counter key gains the owner.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The counters are rebuilt from the jobs table inside the migration, exactly. The
# SHARE lock waits for the writers in flight and keeps new ones out until commit
# (readers go on): a writer that started under the old trigger functions would
# otherwise add deltas without its owner. Compactions and recounts wait on the
# counter tables' locks (ALTER TABLE); the advisory lock is the compaction's, taken
# after the jobs lock like the TRUNCATE trigger and the recount take them.
_LOCK = """
LOCK TABLE jobs IN SHARE MODE;
SELECT pg_advisory_xact_lock(1095324502);
"""

UPGRADE = (
    _LOCK
    + r"""
-- Existing rows get '' and are replaced below; NOT NULL DEFAULT '' keeps the
-- ADD COLUMN a catalogue change (no table rewrite).
ALTER TABLE job_counts ADD COLUMN owner_service text NOT NULL DEFAULT '';
ALTER TABLE job_count_deltas ADD COLUMN owner_service text NOT NULL DEFAULT '';
ALTER TABLE job_counts DROP CONSTRAINT job_counts_pkey,
    ADD PRIMARY KEY (status, task_type, model_profile, error_category, owner_service);

CREATE OR REPLACE FUNCTION jobs_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (status, task_type, model_profile, error_category,
                                  owner_service, n)
    SELECT status, task_type, model_profile,
           CASE WHEN status = 'failed' THEN error_category ELSE '' END, owner_service, count(*)
      FROM new_rows
     GROUP BY 1, 2, 3, 4, 5;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION jobs_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (status, task_type, model_profile, error_category,
                                  owner_service, n)
    SELECT status, task_type, model_profile, error_category, owner_service, sum(n)
      FROM (SELECT status, task_type, model_profile,
                   CASE WHEN status = 'failed' THEN error_category ELSE '' END AS error_category,
                   owner_service, 1 AS n
              FROM new_rows
            UNION ALL
            SELECT status, task_type, model_profile,
                   CASE WHEN status = 'failed' THEN error_category ELSE '' END,
                   owner_service, -1
              FROM old_rows) AS d
     GROUP BY 1, 2, 3, 4, 5
    HAVING sum(n) <> 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION jobs_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (status, task_type, model_profile, error_category,
                                  owner_service, n)
    SELECT status, task_type, model_profile,
           CASE WHEN status = 'failed' THEN error_category ELSE '' END, owner_service, -count(*)
      FROM old_rows
     GROUP BY 1, 2, 3, 4, 5;
    RETURN NULL;
END $$;

-- Exact backfill: nobody writes jobs meanwhile (the lock above), so the counters are
-- the table's GROUP BY, with no deltas left.
DELETE FROM job_count_deltas;
DELETE FROM job_counts;
INSERT INTO job_counts (status, task_type, model_profile, error_category, owner_service, n)
SELECT status, task_type, model_profile,
       CASE WHEN status = 'failed' THEN error_category ELSE '' END, owner_service, count(*)
  FROM jobs
 GROUP BY 1, 2, 3, 4, 5;
"""
)

DOWNGRADE = (
    _LOCK
    + r"""
-- The functions of 0003 (insert, update) and 0001 (delete), without the owner.
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

CREATE OR REPLACE FUNCTION jobs_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (status, task_type, model_profile, error_category, n)
    SELECT status, task_type, model_profile,
           CASE WHEN status = 'failed' THEN error_category ELSE '' END, -count(*)
      FROM old_rows
     GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

DELETE FROM job_count_deltas;
DELETE FROM job_counts;
ALTER TABLE job_counts DROP CONSTRAINT job_counts_pkey;
ALTER TABLE job_counts DROP COLUMN owner_service;
ALTER TABLE job_count_deltas DROP COLUMN owner_service;
ALTER TABLE job_counts ADD PRIMARY KEY (status, task_type, model_profile, error_category);
INSERT INTO job_counts (status, task_type, model_profile, error_category, n)
SELECT status, task_type, model_profile,
       CASE WHEN status = 'failed' THEN error_category ELSE '' END, count(*)
  FROM jobs
 GROUP BY 1, 2, 3, 4;
"""
)


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
