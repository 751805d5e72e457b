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


def child_pids(parent: int) -> set[int]:
    """The living child processes of parent (a `node serve` supervisor's workers), from /proc."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[1]) == parent:
            pids.add(int(entry))
    return pids
