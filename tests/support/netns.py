"""A private network namespace for the mDNS tests, so no multicast leaves the machine.

``NetworkNamespace()`` makes a namespace holding only a loopback interface, up, with
multicast on and the multicast route through it. ``with ns:`` runs the calling thread in it:
every socket the thread opens, every thread it starts and every process it spawns lives
there (a network namespace belongs to a thread, and children inherit their creator's), and
the thread comes back to its own namespace at the end of the block. Processes started in the
block stay in the namespace; it disappears with the last of them.

Needs root (CAP_SYS_ADMIN), as `make test` runs.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from types import TracebackType

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _own() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


class NetworkNamespace:
    def __init__(self) -> None:
        home = _own()
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)} (needs root)")
            self._fd = _own()
            for command in (
                ["ip", "link", "set", "lo", "up", "multicast", "on"],
                ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"],
            ):
                subprocess.run(command, check=True, capture_output=True, timeout=30)
        finally:
            _setns(home)
            os.close(home)
        self._homes: list[int] = []

    def __enter__(self) -> NetworkNamespace:
        self._homes.append(_own())
        _setns(self._fd)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        home = self._homes.pop()
        try:
            _setns(home)
        finally:
            os.close(home)

    def close(self) -> None:
        os.close(self._fd)
