"""One HTTP exchange over a Unix socket from an unprivileged process, to test a socket's
permissions: root (the test runner, in CI containers) ignores file modes, so the client runs
as the given uid and gid with no supplementary groups."""

from __future__ import annotations

import subprocess
from pathlib import Path

# The system interpreter, stdlib only: the test's virtualenv may not be readable by that uid.
_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("connect:", exc.strerror); sys.exit(0)
s.sendall(sys.stdin.buffer.read())
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.split(b"\\r\\n", 1)[0].decode())
"""


def unix_exchange(path: Path, request: bytes, *, uid: int, gid: int) -> str:
    """The status line of the answer, or `connect: <reason>` when the connect was refused."""
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", _CLIENT, str(path)],
        input=request,
        capture_output=True,
        user=uid,
        group=gid,
        extra_groups=[],
        timeout=60,
        check=True,
    )
    return done.stdout.decode().strip()
