"""Install the built wheel the way a user does and run it: `make test` runs this.

    python tests/packaging/check_wheel.py DIST_DIR [--venv build/wheel-venv]

1. Every file git tracks under src/ztpki/ is in the wheel: a schema, migration, template or
   static file that package-data leaves out is named here, even one the demo never reads.
2. A fresh virtual environment (recreated each run) gets the wheel, not editable, and its
   dependencies from the configured index; nothing of the checkout is on its path.
3. From outside the checkout: `ztpki --version` reports the wheel's version, `python -m ztpki`
   runs, and `ztpki demo --devices 4` customizes devices end to end (the XML protocol needs
   its XSD, the stores their schemas).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "ztpki"
DEMO_DEVICES = 4
# Above the demo's own run time under load on a shared machine; a hang is a failure.
TIMEOUT = 600


class WheelCheckFailed(Exception):
    """The wheel does not hold, install or run what the source tree does."""


def source_files(root: Path) -> set[str]:
    """The package's files as wheel paths (ztpki/...): what git tracks, so a stray local file
    cannot fail the check; the tree itself when it is no git checkout (an unpacked sdist)."""
    src = root / "src"
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", PACKAGE],
            cwd=src,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return {
            path.relative_to(src).as_posix()
            for path in (src / PACKAGE).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
    return {name for name in listed.split("\0") if name}


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if name.startswith(f"{PACKAGE}/")}


def missing_from_wheel(wheel: Path, root: Path = ROOT) -> list[str]:
    return sorted(source_files(root) - wheel_files(wheel))


def wheel_version(wheel: Path) -> str:
    # {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl (PEP 427)
    return wheel.name.split("-")[1]


def install(wheel: Path, environment: Path) -> None:
    """A new virtual environment holding the wheel and its dependencies, and nothing else.

    The environment gets no pip of its own: this interpreter's pip installs into it
    (--python), which saves copying pip into it on every run.
    """
    shutil.rmtree(environment, ignore_errors=True)
    venv.create(environment, with_pip=False, clear=True)
    python = environment / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(wheel)],
        cwd=environment,
    )


def check_installed(wheel: Path, environment: Path, workdir: Path) -> None:
    """Run the installed commands from ``workdir``, outside the checkout."""
    bin_dir = environment / "bin"
    shown = run([str(bin_dir / "ztpki"), "--version"], cwd=workdir).splitlines()
    if not shown or shown[0] != f"ztpki {wheel_version(wheel)}":
        raise WheelCheckFailed(f"ztpki --version printed {shown!r}, not the wheel's version")
    where = run([str(bin_dir / "python"), "-m", PACKAGE, "--version"], cwd=workdir).splitlines()
    if where != shown:
        raise WheelCheckFailed(f"python -m ztpki --version printed {where!r}, not {shown!r}")
    origin = run(
        [str(bin_dir / "python"), "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
        cwd=workdir,
    ).strip()
    if not Path(origin).is_relative_to(environment.resolve()):
        raise WheelCheckFailed(f"ztpki was imported from {origin}, not from the installed wheel")
    demo = ["demo", "--devices", str(DEMO_DEVICES), "--workdir", str(workdir / "demo")]
    run([str(bin_dir / "ztpki"), *demo], cwd=workdir)


def check_wheel(wheel: Path, environment: Path, *, root: Path = ROOT) -> None:
    missing = missing_from_wheel(wheel, root)
    if missing:
        raise WheelCheckFailed(
            f"{wheel.name} lacks {', '.join(missing)}: add its kind to "
            "[tool.setuptools.package-data] in pyproject.toml"
        )
    wheel, environment = wheel.resolve(), environment.resolve()
    install(wheel, environment)
    with tempfile.TemporaryDirectory(prefix="ztpki-wheel-") as workdir:
        check_installed(wheel, environment, Path(workdir))


def run(command: list[str], *, cwd: Path) -> str:
    # The user's environment minus anything that would put the checkout on the path.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    if result.returncode != 0:
        raise WheelCheckFailed(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", type=Path, help="the directory `python -m build` wrote to")
    parser.add_argument("--venv", type=Path, default=ROOT / "build" / "wheel-venv")
    args = parser.parse_args(argv)
    wheels = sorted(args.dist.glob(f"{PACKAGE}-*.whl"))
    if len(wheels) != 1:
        print(f"expected one {PACKAGE} wheel in {args.dist}, found {len(wheels)}", file=sys.stderr)
        return 2
    try:
        check_wheel(wheels[0], args.venv)
    except WheelCheckFailed as exc:
        print(f"wheel check failed: {exc}", file=sys.stderr)
        return 1
    print(f"{wheels[0].name}: complete; installed in {args.venv}, --version and demo ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
