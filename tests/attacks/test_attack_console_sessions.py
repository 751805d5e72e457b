"""Attacks on the console's sessions, now kept in the register: a copy of the register (a
backup, a read-only database login) used to open a session or forge a form, a stolen cookie
replayed after its session expired, and the session of an operator who was removed or demoted
since. After each case: the answer, the session table as it should be, and the register,
audit trail and CA records unchanged.

The target is the console of tests/attacks/test_attack_console.py (a second `node serve` on
the deployment's register), whose fixture this module shares.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from tests.attacks.attack_report import AttackReport
from tests.attacks.test_attack_console import (
    PASSWORD,
    ConsoleUnderAttack,
    _record,
    _run,
    console,
)
from tests.support.console_client import Page

from ztpki.node.console.sessions import COOKIE

pytestmark = pytest.mark.timeout(240)
__all__ = ["console"]  # the shared fixture, imported for pytest to find

# Each case's own operator: a removed or demoted one must not take the others' sessions along.
STOLEN, EXPIRED, REMOVED, DEMOTED = "atk-sid", "atk-exp", "atk-rem", "atk-dem"


def _register(console: ConsoleUnderAttack) -> Path:
    return console.d.node_dir / "node.sqlite"


def _rows(console: ConsoleUnderAttack, sql: str, *params: object) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(_register(console))) as db, db:
        return db.execute(sql, params).fetchall()


def _add(console: ConsoleUnderAttack, name: str, role: str = "operator") -> None:
    secret = console.d.root / "operator-password"
    console.d.cli("node", "add-operator", "--dir", str(console.d.node_dir), name, "--role", role,
                  "--password-file", str(secret), "--replace")  # fmt: skip


async def _session(console: ConsoleUnderAttack, name: str) -> tuple[str, str]:
    """Log in as ``name``: (the session cookie, a CSRF token of its pages)."""
    async with console.client() as client:
        page = await client.login(name, PASSWORD)
        assert page.status == 303, page.text
        cookie = client.session.cookie_jar.filter_cookies(aiohttp.client.URL(console.url))
        csrf = (await client.get("/")).csrf
        return str(cookie[COOKIE].value), csrf


async def _with_cookie(
    console: ConsoleUnderAttack, token: str, device_id: str, csrf: str
) -> tuple[Page, Page]:
    """A page and a block of ``device_id`` presenting ``token`` as the session cookie."""
    async with console.client() as client:
        client.session.cookie_jar.update_cookies({COOKIE: token}, aiohttp.client.URL(console.url))
        page = await client.get("/", follow=False)
        post = await client.post(
            f"/devices/{device_id}/block", {"confirm": "yes", "csrf": csrf}, follow=False
        )
        return page, post


def test_fail_register_copy_opens_no_session(
    console: ConsoleUnderAttack, attack_report: AttackReport
) -> None:
    d = console.d
    _add(console, STOLEN)
    token, _ = _run(lambda: _session(console, STOLEN))
    device = d.take_device()
    before = d.snapshot()
    # What a copy of the register holds of that session: the token's hash and the CSRF salt.
    ((token_hash, salt),) = _rows(
        console, "SELECT token_hash, csrf_salt FROM console_session WHERE operator = ?", STOLEN
    )
    assert token_hash == hashlib.sha256(token.encode()).hexdigest()
    dump = "\n".join(sqlite3.connect(_register(console)).iterdump())
    page, post = _run(lambda: _with_cookie(console, str(token_hash), device.device_id, str(salt)))
    assert token not in dump
    assert page.status == 303 and page.headers["Location"] == "/login"
    assert post.status == 401
    # The real cookie still works, with the real CSRF token only.
    _, forged = _run(lambda: _with_cookie(console, token, device.device_id, str(salt)))
    assert forged.status == 403
    checked = d.check_unchanged(before)
    _record(
        attack_report,
        "register-copy-opens-no-session",
        "a copy of the register's console_session row: its token hash as the cookie, its CSRF "
        "salt as the form's token (and the salt with the real cookie)",
        f"the register holds no token; hash as cookie: 303 to /login, POST 401; salt as CSRF "
        f"token: 403; {checked}",
        "refused",
    )


def test_fail_expired_session_cookie_replayed(
    console: ConsoleUnderAttack, attack_report: AttackReport
) -> None:
    d = console.d
    _add(console, EXPIRED)
    token, csrf = _run(lambda: _session(console, EXPIRED))
    device = d.take_device()
    hashed = hashlib.sha256(token.encode()).hexdigest()
    # Its lifetime passes (the row says so; the thief kept the cookie and the form's token).
    with contextlib.closing(sqlite3.connect(_register(console))) as db, db:
        db.execute(
            "UPDATE console_session SET expires_at = '2000-01-01T00:00:00.000000Z' "
            "WHERE token_hash = ?",
            (hashed,),
        )
    before = d.snapshot()
    page, post = _run(lambda: _with_cookie(console, token, device.device_id, csrf))
    assert page.status == 303 and post.status == 401
    left = _rows(console, "SELECT COUNT(*) FROM console_session WHERE token_hash = ?", hashed)
    assert left == [(0,)]
    checked = d.check_unchanged(before)
    _record(
        attack_report,
        "expired-session-replayed",
        "a stolen session cookie and CSRF token replayed after the session's expiry",
        f"page 303 to /login, block POST 401; the expired row deleted; {checked}",
        "refused",
    )


@pytest.mark.parametrize("how", ["removed", "demoted"])
def test_fail_session_outlives_its_operator(
    console: ConsoleUnderAttack, attack_report: AttackReport, how: str
) -> None:
    d = console.d
    name = REMOVED if how == "removed" else DEMOTED
    _add(console, name)
    token, csrf = _run(lambda: _session(console, name))
    device = d.take_device()
    if how == "removed":
        d.cli("node", "operators", "--dir", str(d.node_dir), "--remove", name)
    else:
        _add(console, name, "viewer")
    before = d.snapshot()
    page, post = _run(lambda: _with_cookie(console, token, device.device_id, csrf))
    assert page.status == 303 and post.status == 401
    assert _rows(console, "SELECT COUNT(*) FROM console_session WHERE operator = ?", name) == [(0,)]
    checked = d.check_unchanged(before)
    change = (
        "removed with `node operators --remove`"
        if how == "removed"
        else "made a viewer with `node add-operator --replace`"
    )
    _record(
        attack_report,
        f"session-outlives-operator-{how}",
        f"an operator's open session used after the operator was {change}",
        f"page 303 to /login, block POST 401; the operator's sessions deleted; {checked}",
        "refused",
    )
