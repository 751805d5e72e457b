"""Contract for the web console's sessions in the register (SQLite and PostgreSQL): a session
is found by its token's hash until it expires or idles out, logging out and removing the
operator end it, a restart keeps it, and a register of schema 8 gains the table."""

from __future__ import annotations

from datetime import timedelta

from store_backends import T0, Backend, sha256_hex

from ztpki.store.sqlite_console import Role
from ztpki.store.sqlite_register import SCHEMA_VERSION, SQLiteNodeStore

HOUR = timedelta(hours=1)
IDLE = timedelta(minutes=10)


def _store(backend: Backend) -> SQLiteNodeStore:
    store = backend.node()
    assert isinstance(store, SQLiteNodeStore)
    return store


def _open(store: SQLiteNodeStore, token: str, operator: str = "olga") -> None:
    store.open_console_session(
        sha256_hex(token),
        operator=operator,
        role=Role.OPERATOR,
        csrf_salt="salt-" + token,
        how="password",
        now=T0,
        lifetime=HOUR,
        idle=IDLE,
    )


def test_ok_a_session_is_found_across_a_reopen_until_it_idles_out(backend: Backend) -> None:
    store = _store(backend)
    store.add_operator("olga", role=Role.OPERATOR, password_hash="!", now=T0)
    _open(store, "t1")
    store.close()
    again = _store(backend)  # a restarted node, or another console process
    found = again.console_session(sha256_hex("t1"), now=T0 + timedelta(minutes=9))
    assert found is not None and found.operator == "olga" and found.role is Role.OPERATOR
    assert found.csrf_salt == "salt-t1" and found.expires_at == T0 + HOUR
    assert found.idle_until == T0 + timedelta(minutes=19)  # pushed on by the use
    assert again.console_session(sha256_hex("t1"), now=T0 + timedelta(minutes=18)) is not None
    assert again.console_session(sha256_hex("t2"), now=T0) is None
    assert again.console_session(sha256_hex("t1"), now=T0 + timedelta(minutes=40)) is None
    assert again.count_console_sessions() == 0  # the idle row is deleted


def test_fail_logout_expiry_and_removal_delete_the_rows(backend: Backend) -> None:
    store = _store(backend)
    for name in ("olga", "oscar"):
        store.add_operator(name, role=Role.OPERATOR, password_hash="!", now=T0)
    for token in ("a", "b", "c"):
        _open(store, token)
    _open(store, "d", "oscar")
    assert store.close_console_session(sha256_hex("a"))
    assert not store.close_console_session(sha256_hex("a"))
    assert store.remove_operator("olga")
    assert store.console_session(sha256_hex("b"), now=T0) is None
    assert store.count_console_sessions() == 1
    # Past its expiry even a session used a second before it is gone.
    assert store.console_session(sha256_hex("d"), now=T0 + HOUR) is None
    assert store.count_console_sessions() == 0


def test_ok_a_register_of_schema_8_gains_the_sessions(backend: Backend) -> None:
    store = _store(backend)
    store.add_operator("olga", role=Role.OPERATOR, password_hash="!", now=T0)
    store.close()
    backend.raw("node", "DROP TABLE console_session")
    backend.raw("node", "DROP TABLE cmp_secret")  # schema 10's
    backend.raw("node", "UPDATE schema_version SET version = 8 WHERE component = 'customer_node'")
    migrated = _store(backend)  # the tests' stores migrate on open, as `node migrate` does
    assert migrated.database.schema_version("customer_node") == SCHEMA_VERSION
    _open(migrated, "t1")
    assert migrated.console_session(sha256_hex("t1"), now=T0) is not None
