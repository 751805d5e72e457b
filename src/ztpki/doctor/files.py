"""Permissions of the files that hold secrets: keys and database URLs (which may carry a
password) must be readable by their owner only."""

from __future__ import annotations

import stat
from pathlib import Path

from ztpki.doctor.findings import Finding, error, ok


def secret_file(path: Path, *, what: str) -> Finding:
    subject = f"{what} {path}"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return error("permissions", subject, f"cannot be read: {exc.strerror}", "restore the file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return error(
            "permissions",
            subject,
            f"mode {stat.S_IMODE(mode):04o} lets other users read or change it",
            f"chmod 600 {path}",
        )
    return ok("permissions", subject, f"mode {stat.S_IMODE(mode):04o}")
