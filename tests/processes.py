"""`python -m ai_service api|worker|sidecar` as real subprocesses, for fault-injection tests.

    async with ServiceGroup(tmp_path, database_url, LLM_BASE_URL=...) as services:
        api = await services.start("api", "api", RESCUE_INTERVAL="0.3s")
        worker = await services.start("worker", "w1", WORKER_ID="w1")
        await worker.kill()                      # SIGKILL, like `kill -9`
        worker.pause(); ...; worker.resume()     # SIGSTOP / SIGCONT

Each process gets a free loopback port (`HTTP_PORT` for the API,
`WORKER_HTTP_PORT` for a worker, `SIDECAR_HTTP_PORT` for the sidecar), the
group's environment plus its own, and none of the calling shell's AI Service
variables. Its stdout and stderr (JSON logs) go to `<log_dir>/<name>.log`, so
a failing test can show them. `start` returns once `/readyz` (the sidecar:
`/healthz`) answers 200. Leaving the group kills (SIGKILL) every
process still running, whatever happened in the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from ai_service.config import ENV_NAMES
from tests.helpers import free_port

START_TIMEOUT = 45.0  # python start-up on a loaded 2-core machine takes a few seconds
PORT_VARIABLE = {"api": "HTTP_PORT", "worker": "WORKER_HTTP_PORT", "sidecar": "SIDECAR_HTTP_PORT"}
# The sidecar has no readiness of its own (it reads no database): its health will do.
READY_PATH = {"api": "/readyz", "worker": "/readyz", "sidecar": "/healthz"}


@dataclass
class ServiceProcess:
    """One running `ai-service <command>` and the loopback URL of its HTTP server."""

    command: str
    name: str
    proc: asyncio.subprocess.Process
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def log(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> int:
        """SIGKILL (`kill -9`): no shutdown code runs. Returns the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        return await self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process freezes (a long GC pause, a suspended VM) but keeps its state."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`: the process carries on where it stopped."""
        self.proc.send_signal(signal.SIGCONT)

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the graceful stop (SIGKILL after `timeout`)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return await self.kill()


class ServiceGroup:
    """Starts service processes with a shared environment; kills the survivors on exit."""

    def __init__(self, log_dir: Path, database_url: str, **env: str) -> None:
        self.log_dir = log_dir
        self.database_url = database_url
        self.env = env
        self.processes: list[ServiceProcess] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill_all()

    async def kill_all(self) -> None:
        for process in self.processes:
            await process.kill()

    def logs(self) -> str:
        """The logs of every process started, each under a header (for failure messages)."""
        return "\n".join(f"----- {p.name} ({p.command}) -----\n{p.log()}" for p in self.processes)

    async def spawn(self, command: str, name: str, **env: str) -> ServiceProcess:
        """Start the process without waiting for it to be ready."""
        port = free_port()
        # Nothing of the calling shell's AI Service configuration may leak in.
        known = set(ENV_NAMES.values())
        full_env = {k: v for k, v in os.environ.items() if k not in known}
        full_env.update(
            DATABASE_URL=self.database_url,
            MIGRATE_ON_START="false",
            HTTP_HOST="127.0.0.1",
            WORKER_HTTP_HOST="127.0.0.1",
            SIDECAR_HTTP_HOST="127.0.0.1",
        )
        full_env.update(self.env)
        full_env.update(env)
        full_env[PORT_VARIABLE[command]] = str(port)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ai_service",
                command,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        process = ServiceProcess(command, name, proc, f"http://127.0.0.1:{port}", log_path)
        self.processes.append(process)
        return process

    async def start(self, command: str, name: str, **env: str) -> ServiceProcess:
        """Start the process and return once it is ready (`/readyz`, sidecar `/healthz`)."""
        process = await self.spawn(command, name, **env)
        await wait_ready(process)
        return process


async def wait_ready(process: ServiceProcess, timeout: float = START_TIMEOUT) -> None:
    """Poll `/readyz` (sidecar: `/healthz`) until 200; fail with the log if it exits or hangs."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=process.base_url, timeout=2) as http:
        while True:
            if process.proc.returncode is not None:
                raise AssertionError(
                    f"{process.name} exited with {process.proc.returncode}:\n{process.log()}"
                )
            try:
                if (await http.get(READY_PATH[process.command])).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{process.name} not ready after {timeout}s:\n{process.log()}")
            await asyncio.sleep(0.05)
