"""benchmarks/scale.py with a small fleet, so the script cannot rot between million-device runs.

It runs as an operator runs it (its own process, the real CLI and servers it starts), and
its figures must be there and sane: everything imported, listed and customized.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVICES = 1500
IMPORT_ONLY = 300  # the import alone: no small fleet to compare with


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_ok_scale_benchmark_runs_with_a_small_fleet(tmp_path: Path, database: str) -> None:
    figures = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--database", database,
         "--devices", str(DEVICES),
         "--customizations", "8", "--rounds", "2", "--concurrency", "8",
         "--workdir", str(tmp_path / "w"), "--json", str(figures)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("node import, 1,500 devices", "node import: peak memory",
                 "ratio big / small", "node audit --verify: rate"):  # fmt: skip
        assert line in result.stdout, result.stdout
    data = json.loads(figures.read_text())
    assert data["ok"] and data["listed"] == DEVICES
    assert data["small"]["failed"] == data["large"]["failed"] == 0
    assert data["devices_rows"] >= DEVICES
    assert data["import"]["peak_mb"] > 0 and data["audit_rate"]


def test_ok_import_only_measures_the_import_alone(tmp_path: Path) -> None:
    figures = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--database", "postgresql",
         "--devices", str(IMPORT_ONLY), "--import-only", "--workdir", str(tmp_path / "w"),
         "--json", str(figures)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"node import, {IMPORT_ONLY} devices" in result.stdout, result.stdout
    assert "ratio big / small" not in result.stdout  # nothing after the import ran
    data = json.loads(figures.read_text())
    assert data["ok"] and data["listed"] == IMPORT_ONLY and data["import"]["peak_mb"] > 0
    assert "small" not in data


def test_fail_unreachable_database_url_says_so_without_its_password(tmp_path: Path) -> None:
    url = "postgresql://ztpki:s3cret-pw@127.0.0.1:1/postgres"  # nothing listens on port 1
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--database", "postgresql",
         "--database-url", url, "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot create databases at" in result.stderr and "127.0.0.1" in result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert not (tmp_path / "w").exists()  # refused before building anything
