"""Where the register lives: `node init --database URL` (PostgreSQL), the password kept out of
every output, and `node migrate`, the one command that upgrades a register's schema."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import test_node_cli as node_cli
from tests.support.legacy_register import BEFORE_CONSOLE, V1_SCHEMA
from tests.support.postgres import shared_cluster

from ztpki.cli import main
from ztpki.store import sqlite_register
from ztpki.store.sqlite import open_node_store
from ztpki.store.sqlite_audit import SCHEMA as AUDIT_SCHEMA
from ztpki.store.sqlite_db import stored_schema_version

env = node_cli.env
inputs = node_cli.inputs


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return status, out.getvalue(), " ".join(err.getvalue().split())


@pytest.fixture
def database() -> Iterator[str]:
    cluster = shared_cluster()
    url = cluster.fresh_database("node")
    yield url
    cluster.drop_database(url)


def test_ok_init_on_postgresql_keeps_the_url_private_and_never_shows_the_password(
    inputs: dict[str, Path], database: str
) -> None:
    password = database.split(":")[2].split("@")[0]
    status, out, err = run(*node_cli.init_args(inputs, "--database", database))
    assert status == 0, err
    node = inputs["node"]
    url_file = node / "database.url"
    assert url_file.read_text().strip() == database
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    assert not (node / "node.sqlite").exists()  # the register is in PostgreSQL
    status, policy, err = run("node", "policy", "--dir", str(node))
    assert status == 0, err
    one_line = " ".join(policy.split())
    assert f"customer_node database schema {sqlite_register.SCHEMA_VERSION}" in one_line
    assert "revocation sender: none yet (no node has run on this register)" in one_line
    assert "ztpki:***@127.0.0.1" in one_line
    status, devices, err = run("node", "devices", "--dir", str(node), "--json")
    assert status == 0 and devices.strip() == "[]", err
    for text in (out, policy, devices, err):
        assert password not in text
    with psycopg.connect(database) as pg:
        (version,) = pg.execute(
            "SELECT version FROM schema_version WHERE component = 'customer_node'"
        ).fetchone()
    assert version == sqlite_register.SCHEMA_VERSION


def test_fail_a_wrong_password_is_refused_without_echoing_it(
    inputs: dict[str, Path], database: str
) -> None:
    wrong = "Wr0ng-" + "s3cret-never-shown"
    bad = database.replace(database.split(":")[2].split("@")[0], wrong)
    status, out, err = run(*node_cli.init_args(inputs, "--database", bad))
    assert status == 1
    assert "the database postgresql://ztpki:***@127.0.0.1" in err
    assert 'password authentication failed for user "ztpki"' in err
    assert wrong not in out + err
    assert not (inputs["node"] / "node.toml").exists()
    assert not (inputs["node"] / "database.url").exists()


def test_fail_a_database_option_that_is_no_postgresql_url(inputs: dict[str, Path]) -> None:
    status, out, err = run(
        *node_cli.init_args(inputs, "--database", "mysql://root:hunter2@db/ztpki")
    )
    assert status != 0
    assert "is not a PostgreSQL URL" in err and "hunter2" not in out + err
    assert not (inputs["node"] / "node.toml").exists()


def test_ok_an_old_sqlite_register_is_refused_until_node_migrate(inputs: dict[str, Path]) -> None:
    assert run(*node_cli.init_args(inputs))[0] == 0
    node = inputs["node"]
    register = node / "node.sqlite"
    register.unlink()
    with contextlib.closing(sqlite3.connect(register)) as conn, conn:
        for statement in (*V1_SCHEMA, *AUDIT_SCHEMA):  # the audit trail was there from v1
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER)")
        conn.execute("INSERT INTO schema_version VALUES ('customer_node', 1)")

    status, _, err = run("node", "devices", "--dir", str(node))
    assert status == 1
    assert "holds customer_node schema version 1" in err
    assert "`ztpki node migrate --dir DIR`" in err
    assert stored_schema_version(register, "customer_node") == 1  # refused, nothing migrated

    status, out, err = run("node", "migrate", "--dir", str(node))
    assert status == 0, err
    assert "from customer_node schema version 1 to" in " ".join(out.split())
    assert stored_schema_version(register, "customer_node") == sqlite_register.SCHEMA_VERSION
    assert run("node", "devices", "--dir", str(node))[0] == 0
    status, out, _ = run("node", "migrate", "--dir", str(node))
    assert status == 0 and "nothing to do" in out


def test_ok_an_old_postgresql_register_is_refused_until_node_migrate(
    inputs: dict[str, Path], database: str
) -> None:
    assert run(*node_cli.init_args(inputs, "--database", database))[0] == 0
    node = str(inputs["node"])
    with psycopg.connect(database, autocommit=True) as pg:
        pg.execute("UPDATE schema_version SET version = 3 WHERE component = 'customer_node'")
    status, _, err = run("node", "devices", "--dir", node)
    assert status == 1
    assert "holds customer_node schema version 3" in err
    assert "`ztpki node migrate --dir DIR`" in err
    # This ztpki created PostgreSQL registers at version 4 first: there is no step from 3.
    status, _, err = run("node", "migrate", "--dir", node)
    assert status == 1 and "no migration from customer_node schema version 3" in err
    with psycopg.connect(database, autocommit=True) as pg:
        (version,) = pg.execute(
            "SELECT version FROM schema_version WHERE component = 'customer_node'"
        ).fetchone()
    assert version == 3  # nothing changed


def test_ok_a_postgresql_register_of_schema_4_gains_the_sender_lease_by_node_migrate(
    inputs: dict[str, Path], database: str
) -> None:
    assert run(*node_cli.init_args(inputs, "--database", database))[0] == 0
    node = str(inputs["node"])
    with psycopg.connect(database, autocommit=True) as pg:  # the register as schema 4 had it
        for statement in BEFORE_CONSOLE:
            pg.execute(statement)
        pg.execute("DROP TABLE node_sender_lease")
        pg.execute("DROP TABLE cmp_transaction")
        pg.execute("UPDATE schema_version SET version = 4 WHERE component = 'customer_node'")
    status, _, err = run("node", "devices", "--dir", node)
    assert status == 1 and "holds customer_node schema version 4" in err
    status, out, err = run("node", "migrate", "--dir", node)
    assert status == 0, err
    assert f"from customer_node schema version 4 to {sqlite_register.SCHEMA_VERSION}" in " ".join(
        out.split()
    )
    with psycopg.connect(database, autocommit=True) as pg:
        (version,) = pg.execute(
            "SELECT version FROM schema_version WHERE component = 'customer_node'"
        ).fetchone()
        assert version == sqlite_register.SCHEMA_VERSION == 10
        pg.execute(
            "INSERT INTO node_sender_lease (name, holder, token, expires_at) "
            "VALUES ('revocations', 'a', 1, '2026-01-01T00:00:00.000000Z')"
        )
        with pytest.raises(psycopg.errors.CheckViolation):  # one lease, by its one name
            pg.execute(
                "INSERT INTO node_sender_lease (name, holder, token, expires_at) "
                "VALUES ('other', 'a', 1, '2026-01-01T00:00:00.000000Z')"
            )
    assert run("node", "devices", "--dir", node)[0] == 0


def test_ok_node_policy_says_whether_a_sender_holds_the_lease(
    inputs: dict[str, Path], database: str
) -> None:
    assert run(*node_cli.init_args(inputs, "--database", database))[0] == 0
    node = str(inputs["node"])
    start = datetime.now(UTC)
    with open_node_store(database) as store:
        assert store.take_sender_lease("edge-2 pid 7 ab", now=start, until=start + timedelta(1))
    status, policy, err = run("node", "policy", "--dir", node)
    assert status == 0, err
    assert "revocation sender: edge-2 pid 7 ab (lease token 1, until " in " ".join(policy.split())
    with open_node_store(database) as store:
        assert store.release_sender_lease(1, now=start)
    status, policy, err = run("node", "policy", "--dir", node)
    assert status == 0, err
    assert "revocation sender: none (the lease of edge-2 pid 7 ab ended at" in " ".join(
        policy.split()
    )
