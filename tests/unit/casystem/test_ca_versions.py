"""`ztpki ca list` names the XML enrollment protocol and the database schema, read from the
directory's database without writing to it, and says so when the two releases differ."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from pathlib import Path

import pytest
from lxml import etree

from ztpki.cli import main
from ztpki.protocol import NAMESPACE, PROTOCOL_VERSION
from ztpki.store import sqlite_ca
from ztpki.store.sqlite import open_sqlite_ca_store
from ztpki.store.sqlite_db import stored_schema_version

XSD = Path(__file__).resolve().parents[3] / "src" / "ztpki" / "protocol" / "enrollment.xsd"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", "versions-test-ca-passphrase")
    # Wide enough that rich never wraps the one line the tests read.
    monkeypatch.setenv("COLUMNS", "300")


@pytest.fixture
def plant(tmp_path: Path) -> Path:
    directory = tmp_path / "plant"
    assert main(["ca", "init", "--dir", str(directory), "--name", "root"]) == 0
    return directory


def listed(plant: Path, *extra: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ca", "list", "--dir", str(plant), *extra]) == 0
    return out.getvalue()


def versions_line(plant: Path) -> str:
    return next(line for line in listed(plant).splitlines() if line.startswith("versions:"))


def test_ok_protocol_version_is_the_published_schemas() -> None:
    schema = etree.parse(str(XSD)).getroot()
    assert schema.get("version") == str(PROTOCOL_VERSION)
    assert schema.get("targetNamespace") == NAMESPACE == f"urn:ztpki:enrollment:{PROTOCOL_VERSION}"


def test_ok_before_the_database_exists_nothing_is_created(plant: Path) -> None:
    database = plant / "store.sqlite"
    assert versions_line(plant) == (
        f"versions: XML enrollment protocol {PROTOCOL_VERSION}; "
        f"ca_system database schema {sqlite_ca.SCHEMA_VERSION} (no database yet)"
    )
    assert json.loads(listed(plant, "--json"))[0]["versions"] == {
        "protocol": PROTOCOL_VERSION,
        "schema": sqlite_ca.SCHEMA_VERSION,
        "database_schema": None,
    }
    assert not database.exists()


def test_ok_the_databases_schema_is_read(plant: Path) -> None:
    open_sqlite_ca_store(plant / "store.sqlite").close()
    assert versions_line(plant).endswith(
        f"ca_system database schema {sqlite_ca.SCHEMA_VERSION} ({plant / 'store.sqlite'})"
    )
    entry = json.loads(listed(plant, "--json"))[0]
    assert entry["name"] == "root"
    assert entry["versions"]["database_schema"] == sqlite_ca.SCHEMA_VERSION


def test_fail_a_database_of_another_release_is_named_and_left_as_it_is(plant: Path) -> None:
    database = plant / "store.sqlite"
    open_sqlite_ca_store(database).close()
    with contextlib.closing(sqlite3.connect(database)) as conn, conn:
        conn.execute("UPDATE schema_version SET version = 99 WHERE component = 'ca_system'")
    assert versions_line(plant) == (
        f"versions: XML enrollment protocol {PROTOCOL_VERSION}; {database} holds ca_system "
        f"database schema 99, but this ztpki uses {sqlite_ca.SCHEMA_VERSION}: use the matching "
        "ztpki release"
    )
    assert json.loads(listed(plant, "--json"))[0]["versions"]["database_schema"] == 99
    assert stored_schema_version(database, "ca_system") == 99


def test_ok_an_older_database_is_named_with_the_upgrade_and_left_as_it_is(plant: Path) -> None:
    database = plant / "store.sqlite"
    open_sqlite_ca_store(database).close()
    with contextlib.closing(sqlite3.connect(database)) as conn, conn:
        conn.execute("UPDATE schema_version SET version = 1 WHERE component = 'ca_system'")
    assert versions_line(plant) == (
        f"versions: XML enrollment protocol {PROTOCOL_VERSION}; {database} holds ca_system "
        f"database schema 1, older than this ztpki's {sqlite_ca.SCHEMA_VERSION}: back it up "
        "and run `ztpki ca migrate --dir DIR`"
    )
    assert stored_schema_version(database, "ca_system") == 1


def test_ok_a_database_without_the_component_has_no_schema_of_it(tmp_path: Path) -> None:
    database = tmp_path / "other.sqlite"
    open_sqlite_ca_store(database).close()
    assert stored_schema_version(database, "customer_node") is None
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    assert stored_schema_version(empty, "ca_system") is None


def test_fail_a_file_that_is_no_database_is_a_storage_error(
    plant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plant / "store.sqlite").write_bytes(b"not a database " * 100)
    assert main(["ca", "list", "--dir", str(plant)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: the database {plant / 'store.sqlite'} failed an operation" in err
    assert "Traceback" not in err
    assert (plant / "store.sqlite").read_bytes() == b"not a database " * 100
