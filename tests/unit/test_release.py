"""What an installed ztpki says about itself: `--version` (from the package metadata, the one
source), `python -m ztpki`, and the shell completion scripts click writes.

The wheel itself is installed and run by `make test` (tests/packaging/check_wheel.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import ssl
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import cryptography
import pytest

import ztpki
from ztpki import versions
from ztpki.cli import main

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def process(
    command: list[str], *, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=120, env=env, check=False
    )


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(args))
    return status, out.getvalue()


def test_ok_version_names_ztpki_cryptography_and_both_openssl_builds() -> None:
    from cryptography.hazmat.backends.openssl.backend import backend

    status, out = run("--version")
    assert status == 0
    assert out.splitlines() == [
        f"ztpki {metadata.version('ztpki')}",
        f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})",
        f"TLS: Python {'.'.join(map(str, sys.version_info[:3]))} ssl ({ssl.OPENSSL_VERSION})",
    ]


def test_ok_the_version_is_written_once_in_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert metadata.version("ztpki") == declared == ztpki.__version__
    # No copy of it in the source that a release could forget to bump.
    copies = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "src" / "ztpki").rglob("*.py")
        if f'"{declared}"' in path.read_text() or f"'{declared}'" in path.read_text()
    ]
    assert copies == []


def test_fail_unknown_attribute_of_the_package_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'version'"):
        ztpki.version


def test_ok_source_tree_without_metadata_reports_an_unknown_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert versions.ztpki_version() == versions.UNINSTALLED
    assert run("--version")[1].splitlines()[0] == "ztpki 0+unknown"


def test_ok_python_dash_m_runs_the_same_command() -> None:
    result = process([sys.executable, "-m", "ztpki", "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == run("--version")[1]
    usage = process([sys.executable, "-m", "ztpki", "no-such-role"])
    assert usage.returncode == 2 and "No such command 'no-such-role'" in usage.stderr


def completion_env(**extra: str) -> dict[str, str]:
    # The installed `ztpki` first on PATH, as the completion function calls it by name.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def bash_complete(words: list[str]) -> list[str]:
    """What bash offers after sourcing `ztpki completion bash` and pressing TAB."""
    status, script = run("completion", "bash")
    assert status == 0
    words_array = " ".join(f"'{w}'" for w in words)
    result = process(
        [
            shutil.which("bash") or "bash",
            "--norc",
            "-c",
            f"{script}\nCOMP_WORDS=({words_array}); COMP_CWORD={len(words) - 1}\n"
            '_ztpki_completion ztpki; printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        env=completion_env(),
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_ok_bash_script_is_valid_bash() -> None:
    status, script = run("completion", "bash")
    assert status == 0 and "complete -o nosort -F _ztpki_completion ztpki" in script
    checked = process(["bash", "-n"], stdin=script)
    assert checked.returncode == 0, checked.stderr
    broken = process(["bash", "-n"], stdin=script[:-40])
    assert broken.returncode != 0  # the syntax check can fail


@pytest.mark.parametrize(
    ("words", "offered"),
    [
        pytest.param(
            ["ztpki", ""],
            ["ca", "completion", "demo", "device", "doctor", "factory", "node"],
            id="ok-roles",
        ),
        pytest.param(["ztpki", "no"], ["node"], id="ok-role-prefix"),
        pytest.param(["ztpki", "ca", "li"], ["list", "list-clients"], id="ok-subcommand"),
        pytest.param(["ztpki", "completion", ""], ["bash", "zsh", "fish"], id="ok-shell-choice"),
        pytest.param(["ztpki", "zz"], [], id="fail-nothing-for-an-unknown-prefix"),
    ],
)
def test_bash_completes_roles_and_subcommands(words: list[str], offered: list[str]) -> None:
    assert bash_complete(words) == offered


def test_ok_completion_protocol_answers_the_environment_variable() -> None:
    result = process(
        [str(BIN / "ztpki")],
        env=completion_env(
            _ZTPKI_COMPLETE="bash_complete", COMP_WORDS="ztpki node pol", COMP_CWORD="2"
        ),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["plain,policy"]


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        pytest.param("zsh", "_ZTPKI_COMPLETE=zsh_complete", id="ok-zsh"),
        pytest.param("fish", "_ZTPKI_COMPLETE=fish_complete", id="ok-fish"),
    ],
)
def test_ok_zsh_and_fish_scripts_call_back_into_ztpki(shell: str, marker: str) -> None:
    status, script = run("completion", shell)
    assert status == 0 and marker in script


def test_fail_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run("completion", "powershell")
    assert status == 2 and out == ""
    err = capsys.readouterr().err
    assert "'powershell' is not one of" in err and "'fish'" in err
