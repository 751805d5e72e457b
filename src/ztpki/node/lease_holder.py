"""Who holds an issuance lease: the token names the process that took it.

A worker killed in the middle of an issuance (SIGKILL, the OOM killer) leaves its device's
lease in the register until it expires (``[limits] lease_seconds``, 120 s by default), and
the device is answered "in progress" meanwhile. A token made here carries the holder's
machine (boot id and PID namespace), pid and process start time, so another request on the
same machine can tell that the holder is gone and take the lease over at once, exactly as it
would take over an expired one. A holder elsewhere (another machine, container or boot), or
a token of another form, cannot be judged: its lease runs to expiry as before.
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

__all__ = ["holder_gone", "new_token"]


@functools.cache
def _machine() -> str | None:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}-{namespace}" if boot.isalnum() else None


def _started(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if there is no such process
    or it is dead and not yet reaped (a zombie: a killed worker whose supervisor died too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def new_token() -> str:
    """A fresh lease token; it names this process when the machine can be told apart."""
    random = secrets.token_hex(16)
    machine, pid = _machine(), os.getpid()
    started = _started(pid)
    if machine is None or started is None:
        return random
    return f"{machine}.{pid}.{started}.{random}"


def holder_gone(token: str | None) -> bool:
    """True only when the token's holder is a process of this machine that no longer runs
    (its pid is free, or taken by a process started at another time)."""
    if not token or _machine() is None:
        return False
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _machine() or not (parts[1] + parts[2]).isdigit():
        return False
    return _started(int(parts[1])) != int(parts[2])
