"""Run the shell commands an operator would type (curl, openssl), for interop tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def sh(script: str, cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"script failed ({result.returncode}):\n{script}\n{result.stdout}\n{result.stderr}"
        )
    return result
