"""Audio kept apart from the job rows: uploads (`POST /api/v1/audio`) and moved base64.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-09
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# One row per stored recording; its bytes are in `audio_chunks`, in order, so that
# neither an upload nor a worker's read ever holds a whole recording in memory.
# `size` and `sha256` stay NULL while an upload is under way (such a row is no audio
# yet: jobs cannot name it, and retention removes it when the upload never finished).
UPGRADE = """
CREATE TABLE audio_blobs (
    id            uuid PRIMARY KEY,
    owner_service text NOT NULL,
    content_type  text NOT NULL,
    size          bigint CHECK (size > 0),
    sha256        text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- when a job last named it: retention counts from the later of the two
    used_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((size IS NULL) = (sha256 IS NULL))
);
CREATE INDEX audio_blobs_used_idx ON audio_blobs (used_at);
CREATE TABLE audio_chunks (
    audio_id uuid NOT NULL REFERENCES audio_blobs (id) ON DELETE CASCADE,
    n        int NOT NULL CHECK (n >= 0),
    data     bytea NOT NULL,
    PRIMARY KEY (audio_id, n)
);
-- Compressed audio does not compress again: store the chunks out of line as they
-- are, instead of letting every insert try pglz on a megabyte first.
ALTER TABLE audio_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
-- Retention keeps a recording while a pending or running job names it: found here (only
-- jobs whose input names an audio_id have an entry, so the index stays small).
CREATE INDEX jobs_audio_idx ON jobs ((input->>'audio_id')) WHERE input ? 'audio_id';
"""

DOWNGRADE = """
DROP INDEX IF EXISTS jobs_audio_idx;
DROP TABLE IF EXISTS audio_chunks;
DROP TABLE IF EXISTS audio_blobs;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
