"""`ztpki node add-operator` and `node operators`: the password from a file, the environment
or nowhere (refused, never an empty one), names and lengths checked, a name taken refused
unless --replace; the register keeps an argon2 hash only."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import test_node_cli as node_cli
from test_node_database import run

env = node_cli.env
inputs = node_cli.inputs


def operators(node: Path) -> dict[str, tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(node / "node.sqlite")) as db:
        rows = db.execute("SELECT name, role, password_hash FROM console_operator").fetchall()
    return {name: (role, hashed) for name, role, hashed in rows}


def test_ok_operators_are_added_from_a_file_or_the_environment_and_listed(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(*node_cli.init_args(inputs))[0] == 0
    node = str(inputs["node"])
    secret = tmp_path / "olga.pw"
    secret.write_text("olga-long-password\n")
    status, out, err = run("node", "add-operator", "--dir", node, "olga", "--role", "operator",
                           "--password-file", str(secret))  # fmt: skip
    assert status == 0, err
    assert "olga (operator) may log in" in " ".join(out.split())
    monkeypatch.setenv("ZTPKI_OPERATOR_PASSWORD", "victor-long-password")
    assert run("node", "add-operator", "--dir", node, "victor", "--role", "viewer")[0] == 0
    kept = operators(inputs["node"])
    assert kept["olga"][0] == "operator" and kept["victor"][0] == "viewer"
    assert all(h.startswith("$argon2id$") for _, h in kept.values())
    assert "olga-long-password" not in str(kept)
    status, out, _ = run("node", "operators", "--dir", node)
    assert status == 0 and out.split() == ["olga", "operator", "victor", "viewer"]


def test_fail_bad_operators_and_passwords_are_refused_and_nothing_kept(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(*node_cli.init_args(inputs))[0] == 0
    node = str(inputs["node"])
    monkeypatch.delenv("ZTPKI_OPERATOR_PASSWORD", raising=False)
    short = tmp_path / "short.pw"
    short.write_text("short")
    status, _, err = run("node", "add-operator", "--dir", node, "eve", "--role", "operator",
                         "--password-file", str(short))  # fmt: skip
    assert status != 0 and "12 to 1024" in err
    status, _, err = run("node", "add-operator", "--dir", node, "bad name", "--role", "viewer")
    assert status != 0 and "operator name" in err
    status, _, err = run("node", "add-operator", "--dir", node, "eve", "--role", "viewer")
    assert status != 0 and "no password" in err  # stdin is no terminal here: never empty
    status, _, err = run("node", "add-operator", "--dir", node, "eve", "--role", "viewer",
                         "--certificate-only", "--password-file", str(short))  # fmt: skip
    assert status != 0 and "--certificate-only takes no --password-file" in err
    assert operators(inputs["node"]) == {}
    assert run("node", "add-operator", "--dir", node, "carol", "--role", "viewer",
               "--certificate-only")[0] == 0  # fmt: skip
    status, _, err = run("node", "add-operator", "--dir", node, "carol", "--role", "operator",
                         "--certificate-only")  # fmt: skip
    assert status != 0 and "--replace" in err
    assert operators(inputs["node"]) == {"carol": ("viewer", "!")}


def test_ok_an_operator_is_removed_and_an_unknown_name_is_refused(
    inputs: dict[str, Path],
) -> None:
    assert run(*node_cli.init_args(inputs))[0] == 0
    node = str(inputs["node"])
    for name in ("carol", "dave"):
        assert run("node", "add-operator", "--dir", node, name, "--role", "viewer",
                   "--certificate-only")[0] == 0  # fmt: skip
    status, out, err = run("node", "operators", "--dir", node, "--remove", "carol")
    assert status == 0, err
    assert "operator carol removed; their console sessions are ended" in " ".join(out.split())
    status, _, err = run("node", "operators", "--dir", node, "--remove", "carol")
    assert status != 0 and "no operator named 'carol'" in err
    assert operators(inputs["node"]) == {"dave": ("viewer", "!")}  # nothing else changed
