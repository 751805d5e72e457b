"""The wheel check `make test` runs (check_wheel.py) fails when the wheel lacks a file.

A copy of the source tree, with a data file of each kind a later feature will add (a web
console's templates and static files, a store migration), is built into a wheel once: every
kind is packaged; then the same wheel without the protocol's XSD is refused, by the file
comparison naming it and, when installed, by the demo that needs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging import check_wheel

XSD = "ztpki/protocol/enrollment.xsd"
# Where later features put their data (docs: ARCHITECTURE "Growing the map").
FUTURE_DATA = (
    "ztpki/node/console/templates/devices/list.html",
    "ztpki/node/console/static/css/console.css",
    "ztpki/store/migrations/0002_revocation.sql",
    "ztpki/protocol/cmp/profile.xsd",
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(check_wheel.ROOT / name, root / name)
    shutil.copytree(
        check_wheel.ROOT / "src" / "ztpki",
        root / "src" / "ztpki",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in FUTURE_DATA:
        path = root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}\n")
    return root


@pytest.fixture(scope="module")
def wheel(tree: Path) -> Iterator[Path]:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--quiet", "--outdir", "dist", "."],
        cwd=tree,
        capture_output=True,
        check=True,
        timeout=600,
    )
    (built,) = (tree / "dist").glob("ztpki-*.whl")
    yield built


def without(wheel: Path, name: str, out: Path) -> Path:
    """The wheel as a packaging mistake would leave it: ``name`` absent (and from RECORD)."""
    doctored = out / wheel.name
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(doctored, "w") as target:
        for item in source.infolist():
            if item.filename == name:
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(
                    line
                    for line in data.splitlines(keepends=True)
                    if not line.startswith(name.encode() + b",")
                )
            target.writestr(item, data)
    return doctored


def test_ok_every_kind_of_data_file_is_packaged(wheel: Path, tree: Path) -> None:
    packaged = check_wheel.wheel_files(wheel)
    assert {XSD, "ztpki/py.typed", *FUTURE_DATA} <= packaged
    assert check_wheel.missing_from_wheel(wheel, tree) == []


def test_ok_the_checkout_lists_what_git_tracks() -> None:
    files = check_wheel.source_files(check_wheel.ROOT)
    assert {XSD, "ztpki/py.typed", "ztpki/__main__.py"} <= files
    assert not any("__pycache__" in name for name in files)


def test_fail_wheel_without_the_xsd_is_named_before_installing(
    wheel: Path, tree: Path, tmp_path: Path
) -> None:
    doctored = without(wheel, XSD, tmp_path)
    assert XSD not in check_wheel.wheel_files(doctored)
    assert check_wheel.missing_from_wheel(doctored, tree) == [XSD]
    environment = tmp_path / "venv"
    with pytest.raises(check_wheel.WheelCheckFailed, match=re.escape(f"lacks {XSD}")):
        check_wheel.check_wheel(doctored, environment, root=tree)
    assert not environment.exists()


def test_fail_installed_wheel_without_the_xsd_fails_the_demo(wheel: Path, tmp_path: Path) -> None:
    doctored = without(wheel, XSD, tmp_path)
    environment = tmp_path / "venv"
    check_wheel.install(doctored, environment)
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(check_wheel.WheelCheckFailed) as failed:
        check_wheel.check_installed(doctored, environment, workdir)
    message = str(failed.value)
    # --version and the import passed: it is the demo, reading the protocol, that failed.
    assert "demo --devices" in message and "enrollment.xsd" in message
