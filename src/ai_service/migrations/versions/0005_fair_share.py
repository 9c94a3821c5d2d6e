"""Fair share and model-profile limits in the claim: the claim index gains
owner_service, the running-jobs index model_profile.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Claim: per (task_type, model_profile), priority level, then owner_service, so that a
-- claim finds each level's owners by skip scans and reads each owner's runnable range
-- (run_after <= now()) in order: fair share between callers at a cost bounded by the
-- claim, whatever the number of owners or the backlog.
DROP INDEX jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON jobs (task_type, model_profile, priority DESC, owner_service,
                                     run_after, id)
    WHERE status = 'pending';
-- Running jobs by model profile: a limited profile's running jobs are counted in the
-- claim (MODEL_PROFILE_LIMITS). The rescuer still reads every running job from it; the
-- key never changes while a job runs, so heartbeats stay HOT.
DROP INDEX jobs_running_idx;
CREATE INDEX jobs_running_idx ON jobs (model_profile, worker_id) WHERE status = 'running';
"""

DOWNGRADE = r"""
DROP INDEX jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON jobs (task_type, model_profile, priority DESC, run_after, id)
    WHERE status = 'pending';
DROP INDEX jobs_running_idx;
CREATE INDEX jobs_running_idx ON jobs (worker_id) WHERE status = 'running';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
