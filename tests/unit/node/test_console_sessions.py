"""Console sessions expire on the server, CSRF tokens compare exactly, failed logins are
throttled per name and per address, and passwords are argon2 hashes."""

from __future__ import annotations

import pytest

from ztpki.errors import ConfigurationError
from ztpki.node.console.passwords import (
    CERTIFICATE_ONLY,
    check_operator_name,
    hash_password,
    verify_password,
)
from ztpki.node.console.sessions import LoginThrottle, Sessions
from ztpki.store.sqlite_console import Role


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ok_a_session_lives_until_its_expiry_on_the_server() -> None:
    clock = Clock()
    sessions = Sessions(lifetime=60, clock=clock)
    token, session = sessions.open("olga", Role.OPERATOR, how="password")
    assert sessions.find(token) is session and session.may_change()
    clock.now += 59
    assert sessions.find(token) is session
    clock.now += 1
    assert sessions.find(token) is None  # expired: whatever cookie the browser still keeps
    assert sessions.find(token) is None


def test_fail_unknown_closed_and_empty_tokens_find_no_session() -> None:
    sessions = Sessions(lifetime=60)
    token, _ = sessions.open("victor", Role.VIEWER, how="password")
    assert sessions.find("forged") is None and sessions.find("") is None
    sessions.close(token)
    assert sessions.find(token) is None


def test_fail_a_viewer_may_not_change_and_a_wrong_csrf_token_does_not_match() -> None:
    _, session = Sessions(lifetime=60).open("victor", Role.VIEWER, how="password")
    assert not session.may_change()
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches(None)
    assert not session.csrf_matches("")
    assert not session.csrf_matches(session.csrf[:-1])


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
