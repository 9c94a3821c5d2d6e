"""The code before this round, to measure beside the new code in one run.

`baseline_source()` checks out `BASELINE` (the landed version this round
started from) into a temporary git worktree and yields its `src` folder:
processes started with `PYTHONPATH` pointing there run the old package with
this environment's libraries. `migrate_with` gives a database the old schema.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# "Review pass: ..." - the code as it landed before this round; BENCH_BASELINE=<commit>
# compares with another one (e.g. the previous round)
BASELINE = os.environ.get("BENCH_BASELINE", "0db68c5")
REPO = Path(__file__).resolve().parent.parent
_MIGRATE = "import sys; from ai_service import migrate; migrate.upgrade(sys.argv[1])"


@contextmanager
def baseline_source() -> Iterator[Path]:
    """The old code's `src` folder, in a temporary worktree removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="ai-service-baseline-") as tmp:
        checkout = Path(tmp) / "checkout"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), BASELINE],
            check=True,
            capture_output=True,
        )
        try:
            yield checkout / "src"
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)],
                check=False,
                capture_output=True,
            )


def migrate_with(source: Path, url: str) -> None:
    """Apply the old code's migrations to the database at `url`."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ai_service import migrate; migrate.upgrade(sys.argv[1])",
            url,
        ],
        env={**os.environ, "PYTHONPATH": str(source)},
        check=True,
        capture_output=True,
    )
