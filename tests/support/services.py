"""Start ztpki services as real processes on loopback and wait for their readiness line.

Every server command prints `listening on HOST:PORT` once it accepts connections; we wait
for that line (never a sleep) and stop the process on exit.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

READY_PREFIX = "listening on "


@dataclass
class Service:
    process: subprocess.Popen[str]
    host: str
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def ztpki_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ztpki", *args]


def start(
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Service:
    """Run `ztpki ARGS` and return once it printed its readiness line."""
    full_env = {**os.environ, **(env or {})}
    log_file = log_path.open("w")
    process = subprocess.Popen(
        ztpki_argv(*args), stdout=subprocess.PIPE, stderr=log_file, text=True, env=full_env
    )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith(READY_PREFIX):
                host, _, port = line[len(READY_PREFIX) :].strip().rpartition(":")
                return Service(process, host, int(port), log_path)
    finally:
        selector.close()
    process.kill()
    process.wait()
    raise RuntimeError(f"service {' '.join(args)} did not become ready:\n{log_path.read_text()}")


@contextmanager
def running(
    args: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[Service]:
    service = start(args, log_path=log_path, env=env)
    try:
        yield service
    finally:
        service.stop()


def run_ztpki(
    *args: str, env: Mapping[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run one ztpki command to completion, as an operator would."""
    result = subprocess.run(
        ztpki_argv(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"ztpki {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result
