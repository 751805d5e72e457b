"""A directory's files, modes and content hashes: to assert 'left exactly as it was'."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): f"{oct(p.stat().st_mode)} "
        + (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(path.rglob("*"))
    }
