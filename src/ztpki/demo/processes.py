"""Run ztpki services as child processes and wait for their readiness line.

Every server command prints `listening on HOST:PORT` on stdout once it accepts connections.
The demo and the tests wait for that line (never a fixed delay) and stop what they started.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ztpki.errors import ZtpkiError

READY_PREFIX = "listening on "


class ServiceFailed(ZtpkiError):
    """A child service exited or never printed its readiness line."""

    code = "service-failed"


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[str]
    host: str
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, *, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def ztpki_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ztpki", *args]


def start_service(
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    timeout: float = 60.0,
) -> ServiceProcess:
    """Run `ztpki ARGS` and return once it printed its readiness line."""
    log_file = log_path.open("w")
    process = subprocess.Popen(
        ztpki_argv(*args),
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # Ctrl-C in the terminal reaches only the parent, which stops us
    )
    log_file.close()
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=remaining):
                break
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith(READY_PREFIX):
                host, _, port = line[len(READY_PREFIX) :].strip().rpartition(":")
                return ServiceProcess(name or args[0], process, host, int(port), log_path)
    finally:
        selector.close()
    process.kill()
    process.wait()
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    raise ServiceFailed(f"`ztpki {' '.join(args)}` did not become ready; its log ends:\n{tail}")
