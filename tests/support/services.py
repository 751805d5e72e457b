"""Start ztpki services as real processes on loopback, for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from ztpki.demo.processes import ServiceProcess, start_service, ztpki_argv

Service = ServiceProcess


def start(
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Service:
    """Run `ztpki ARGS` and return once it printed `listening on HOST:PORT`."""
    return start_service(args, log_path=log_path, env=env, timeout=timeout)


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
            f"ztpki {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result
