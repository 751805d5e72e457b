"""Lease tokens name their holder: a killed holder of this machine is told apart from a
living one, and a token of anywhere else (or of an older form) is never judged dead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ztpki.node.lease_holder import holder_gone, new_token


def token_of_a_process_that_exited() -> str:
    result = subprocess.run(
        [sys.executable, "-c", "from ztpki.node.lease_holder import new_token; print(new_token())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_ok_a_living_holder_is_not_gone() -> None:
    token = new_token()
    assert token.split(".")[1] == str(os.getpid())
    assert holder_gone(token) is False
    assert new_token() != token  # the random part: two leases never share a token


def test_ok_a_holder_that_exited_is_gone() -> None:
    assert holder_gone(token_of_a_process_that_exited()) is True


def test_ok_a_killed_holder_not_yet_reaped_is_gone() -> None:
    """A worker killed along with its supervisor stays a zombie until someone reaps it."""
    child = subprocess.Popen(
        [sys.executable, "-c", "from ztpki.node.lease_holder import new_token; print(new_token())"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        token = child.stdout.readline().strip()
        assert holder_gone(token) is False or child.poll() is not None
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
        assert holder_gone(token) is True
    finally:
        child.wait()


def test_ok_a_reused_pid_is_not_the_holder() -> None:
    machine, pid, started, random = new_token().split(".")
    assert holder_gone(f"{machine}.{pid}.{int(started) + 1}.{random}") is True


def test_fail_tokens_that_cannot_be_judged_are_never_gone() -> None:
    machine, _, _, random = token_of_a_process_that_exited().split(".")
    other_machine = "0" * 32 + "-1"
    for token in (
        None,
        "",
        "0123456789abcdef0123456789abcdef",  # the older, random-only form
        f"{other_machine}.{os.getpid() + 100000}.1.{random}",  # a holder elsewhere
        f"{machine}.x.1.{random}",
        f"{machine}.1.{random}",
    ):
        assert holder_gone(token) is False, token
