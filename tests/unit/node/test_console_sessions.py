"""Console sessions expire on the server, CSRF tokens compare exactly, failed logins are
throttled per name and per address, and passwords are argon2 hashes."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ztpki.errors import ConfigurationError
from ztpki.node.console.passwords import (
    CERTIFICATE_ONLY,
    check_operator_name,
    hash_password,
    verify_password,
)
from ztpki.node.console.sessions import LoginThrottle, Sessions
from ztpki.store.sqlite import open_sqlite_node_store
from ztpki.store.sqlite_console import Role
from ztpki.store.sqlite_register import SQLiteNodeStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WallClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteNodeStore]:
    with open_sqlite_node_store(tmp_path / "node.sqlite") as opened:
        for name, role in (("olga", Role.OPERATOR), ("victor", Role.VIEWER)):
            opened.add_operator(name, role=role, password_hash="!", now=T0)
        yield opened


def test_ok_a_session_lives_until_its_expiry_on_the_server(store: SQLiteNodeStore) -> None:
    clock = WallClock()
    sessions = Sessions(store, lifetime=60, idle=60, clock=clock)
    token, session = sessions.open("olga", Role.OPERATOR, how="password")
    assert sessions.find(token) == session and session.may_change()
    clock.now += timedelta(seconds=59)
    assert sessions.find(token) == session
    clock.now += timedelta(seconds=1)
    assert sessions.find(token) is None  # expired: whatever cookie the browser still keeps
    assert sessions.find(token) is None
    assert store.count_console_sessions() == 0  # the expired row is gone


def test_fail_an_idle_session_ends_and_a_used_one_is_kept(store: SQLiteNodeStore) -> None:
    clock = WallClock()
    sessions = Sessions(store, lifetime=3600, idle=120, clock=clock)
    used, _ = sessions.open("olga", Role.OPERATOR, how="password")
    idle, _ = sessions.open("olga", Role.OPERATOR, how="password")
    for _ in range(3):  # 270 s in all, never 120 s without a request
        clock.now += timedelta(seconds=90)
        assert sessions.find(used) is not None
    assert sessions.find(idle) is None
    assert store.count_console_sessions(operator="olga") == 1


def test_fail_unknown_closed_and_empty_tokens_find_no_session(store: SQLiteNodeStore) -> None:
    sessions = Sessions(store, lifetime=60, idle=60)
    token, _ = sessions.open("victor", Role.VIEWER, how="password")
    assert sessions.find("forged") is None and sessions.find("") is None
    assert sessions.find("x" * 10_000) is None
    sessions.close(token)
    assert sessions.find(token) is None


def test_fail_a_viewer_may_not_change_and_a_wrong_csrf_token_does_not_match(
    store: SQLiteNodeStore,
) -> None:
    sessions = Sessions(store, lifetime=60, idle=60)
    token, session = sessions.open("victor", Role.VIEWER, how="password")
    assert not session.may_change()
    assert session.csrf_matches(session.csrf)
    found = sessions.find(token)
    assert found is not None and found.csrf == session.csrf  # the same from the register
    assert not session.csrf_matches(None)
    assert not session.csrf_matches("")
    assert not session.csrf_matches(session.csrf[:-1])


def test_fail_removing_or_replacing_an_operator_ends_their_sessions(
    store: SQLiteNodeStore,
) -> None:
    sessions = Sessions(store, lifetime=60, idle=60)
    olga, _ = sessions.open("olga", Role.OPERATOR, how="password")
    victor, _ = sessions.open("victor", Role.VIEWER, how="password")
    store.add_operator("victor", role=Role.OPERATOR, password_hash="!", now=T0, replace=True)
    assert sessions.find(victor) is None  # a new role: log in again to have it
    assert store.remove_operator("olga") and not store.remove_operator("olga")
    assert sessions.find(olga) is None
    assert store.count_console_sessions() == 0


def test_ok_the_register_holds_no_token_and_no_csrf_token(
    store: SQLiteNodeStore, tmp_path: Path
) -> None:
    token, session = Sessions(store, lifetime=60, idle=60).open(
        "olga", Role.OPERATOR, how="password"
    )
    with sqlite3.connect(tmp_path / "node.sqlite") as db:
        rows = db.execute("SELECT * FROM console_session").fetchall()
        dump = "\n".join(db.iterdump())
    assert len(rows) == 1
    assert token not in dump and session.csrf not in dump
    assert hashlib.sha256(token.encode()).hexdigest() in dump


def test_fail_logins_are_throttled_per_name_and_per_address_then_allowed_again() -> None:
    clock = Clock()
    throttle = LoginThrottle(3, 60, clock=clock)
    for _ in range(3):
        assert not throttle.blocked("olga", "10.0.0.1")
        throttle.failed("olga", "10.0.0.1")
    assert throttle.blocked("olga", "10.0.0.2")  # the name, from anywhere
    assert not throttle.blocked("someone", "10.0.0.1")
    for number in range(9):  # 12 failures in all from the address: 4 times the name's limit
        throttle.failed(f"name-{number}", "10.0.0.1")
    assert throttle.blocked("someone", "10.0.0.1")  # the address, for any name
    assert not throttle.blocked("someone", "10.0.0.2")
    assert 1 <= throttle.retry_after("olga", "10.0.0.1") <= 61
    clock.now += 60
    assert not throttle.blocked("olga", "10.0.0.1")


def test_ok_passwords_are_argon2_and_verify_only_themselves() -> None:
    hashed = hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "correct horse battery")
    assert not verify_password(hashed, "correct horse battery!")
    assert not verify_password(None, "correct horse battery")
    assert not verify_password(CERTIFICATE_ONLY, "anything at all")
    assert not verify_password(hashed, "x" * 5000)


@pytest.mark.parametrize("password", ["short", "x" * 2000])
def test_fail_a_password_too_short_or_too_long_is_refused(password: str) -> None:
    with pytest.raises(ConfigurationError, match="12 to 1024"):
        hash_password(password)


@pytest.mark.parametrize("name", ["", "-lead", "has space", "x" * 65, "<script>"])
def test_fail_an_operator_name_outside_the_alphabet_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="operator name"):
        check_operator_name(name)
