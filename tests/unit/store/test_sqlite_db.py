"""SQLite-only behaviour under the contract: pragmas, file mode, locking and error mapping."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from store_backends import make_certificate, open_fresh_and_append

from ztpki.errors import ConfigurationError, StorageError, Unavailable
from ztpki.store import open_sqlite_ca_store, open_sqlite_node_store
from ztpki.store.sql import GroupAborted
from ztpki.store.sqlite_db import SQLiteDatabase


def pragma(db: SQLiteDatabase, name: str) -> object:
    return db.connection().execute(f"PRAGMA {name}").fetchone()[0]


@pytest.mark.parametrize(
    ("durable", "synchronous"), [(True, 2), (False, 1)], ids=["ok-full", "ok-normal"]
)
def test_ok_pragmas(tmp_path: Path, durable: bool, synchronous: int) -> None:
    db = SQLiteDatabase(tmp_path / "x.db", durable=durable)
    try:
        assert pragma(db, "journal_mode") == "wal"
        assert pragma(db, "synchronous") == synchronous
        assert pragma(db, "foreign_keys") == 1
        assert pragma(db, "busy_timeout") == 30000
    finally:
        db.close()


def test_ok_database_file_is_private(tmp_path: Path) -> None:
    open_sqlite_node_store(tmp_path / "node.db").close()
    assert stat.S_IMODE((tmp_path / "node.db").stat().st_mode) == 0o600


def test_fail_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        open_sqlite_ca_store(tmp_path / "absent" / "ca.db")


def test_fail_use_after_close(tmp_path: Path) -> None:
    store = open_sqlite_ca_store(tmp_path / "ca.db")
    assert store.count() == 0
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.count()


def test_ok_each_thread_has_its_own_connection(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "x.db")
    seen: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: seen.append(db.connection()))
    thread.start()
    thread.join()
    try:
        assert seen[0] is not db.connection()
        assert db.connection() is db.connection()
    finally:
        db.close()


def test_fail_busy_database_is_unavailable(tmp_path: Path) -> None:
    store = open_sqlite_ca_store(tmp_path / "ca.db", busy_timeout=0.05)
    holder = sqlite3.connect(tmp_path / "ca.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable) as caught:
            store.record_issuance(make_certificate("01"), supersede=False)
        assert caught.value.retry_after == 1
        assert store.count() == 0  # readers still read under WAL
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.record_issuance(make_certificate("01"), supersede=False) == []
    store.close()


def test_ok_both_stores_can_share_one_file(tmp_path: Path) -> None:
    with (
        open_sqlite_ca_store(tmp_path / "one.db") as ca,
        open_sqlite_node_store(tmp_path / "one.db") as node,
    ):
        ca.record_issuance(make_certificate("01"), supersede=False)
        assert node.verify().ok and ca.count() == 1


@pytest.mark.timeout(180)
def test_ok_processes_opening_a_fresh_database_together(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers = 6
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=open_fresh_and_append, args=("sqlite", str(tmp_path), w, barrier, results)
        )
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert all(isinstance(seq, int) for seq in outcomes.values()), outcomes
    assert sorted(outcomes.values()) == list(range(1, workers + 1))
    with open_sqlite_node_store(tmp_path / "node.db") as store:
        assert store.verify().checked == workers


# ---------------------------------------------------------------- group commit, non-blocking reads


def _rows(db: SQLiteDatabase) -> list[int]:
    with db.read() as conn:
        return [int(v) for (v,) in conn.execute("SELECT v FROM t ORDER BY v")]


@pytest.fixture
def table_db(tmp_path: Path) -> SQLiteDatabase:
    db = SQLiteDatabase(tmp_path / "g.db")
    with db.write() as conn:
        conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    return db


def test_ok_group_commits_units_together_and_undoes_a_failing_one(
    table_db: SQLiteDatabase,
) -> None:
    other = sqlite3.connect(table_db.path, isolation_level=None)
    try:
        with table_db.group():
            with table_db.write() as conn:
                conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(ValueError), table_db.write() as conn:
                conn.execute("INSERT INTO t VALUES (2)")
                raise ValueError("this unit fails")
            with table_db.read() as conn:  # a unit sees the group's earlier units
                assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1
            with table_db.write() as conn:
                conn.execute("INSERT INTO t VALUES (3)")
            # Nothing is visible to others before the group's one commit.
            assert other.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
        assert _rows(table_db) == [1, 3]
        # negative control: a unit outside a group commits on its own, as before
        with table_db.write() as conn:
            conn.execute("INSERT INTO t VALUES (4)")
        assert other.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 3
    finally:
        other.close()
        table_db.close()


def test_fail_group_whose_transaction_ended_commits_nothing(table_db: SQLiteDatabase) -> None:
    try:
        with pytest.raises(GroupAborted), table_db.group():
            with table_db.write() as conn:
                conn.execute("INSERT INTO t VALUES (1)")
            with table_db.write() as conn:
                conn.execute("ROLLBACK")  # what SQLite does by itself on some I/O errors
        assert _rows(table_db) == []
        # negative control: the database works on afterwards, groups included
        with table_db.group(), table_db.write() as conn:
            conn.execute("INSERT INTO t VALUES (5)")
        assert _rows(table_db) == [5]
    finally:
        table_db.close()


def test_fail_groups_do_not_nest(table_db: SQLiteDatabase) -> None:
    try:
        with pytest.raises(RuntimeError, match="nest"), table_db.group(), table_db.group():
            pass
        assert not table_db.connection().in_transaction
    finally:
        table_db.close()


def test_ok_read_without_waiting_has_a_connection_that_never_waits(tmp_path: Path) -> None:
    store = open_sqlite_node_store(tmp_path / "n.db")
    db = store._db
    try:
        assert store.get("dev-1", wait=False) is None
        nowait = db.connection(wait=False)
        assert nowait is not db.connection()
        assert nowait.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        # negative control: the thread's ordinary connection still waits for the lock
        assert pragma(db, "busy_timeout") == 30000
    finally:
        store.close()


@pytest.mark.parametrize("durable", [True, False], ids=["ok-durable", "ok-not-durable"])
def test_ok_unsynced_write_commits_and_keeps_the_connection_synchronous(
    tmp_path: Path, durable: bool
) -> None:
    db = SQLiteDatabase(tmp_path / "s.db", durable=durable)
    try:
        with db.write(sync=False) as conn:
            conn.execute("CREATE TABLE t (v INTEGER)")
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL for it
        assert pragma(db, "synchronous") == (2 if durable else 1)
        with db.read() as conn:
            assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    finally:
        db.close()


V1 = ("CREATE TABLE thing (id INTEGER PRIMARY KEY)",)
V2 = ("CREATE TABLE thing (id INTEGER PRIMARY KEY, colour TEXT)",)
TO_V2 = {1: ("ALTER TABLE thing ADD COLUMN colour TEXT",)}


def _version(db: SQLiteDatabase) -> int:
    row = db.connection().execute("SELECT version FROM schema_version").fetchone()
    return int(row[0])


def test_ok_older_schema_upgraded_along_its_migrations(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "x.db")
    try:
        db.ensure_schema("part", 1, V1)
        db.connection().execute("INSERT INTO thing (id) VALUES (7)")
        db.ensure_schema("part", 2, V2, migrations=TO_V2)
        assert _version(db) == 2
        assert db.connection().execute("SELECT id, colour FROM thing").fetchall() == [(7, None)]
        db.ensure_schema("part", 2, V2, migrations=TO_V2)  # already there: nothing to do
    finally:
        db.close()


@pytest.mark.parametrize(
    ("version", "migrations"),
    [
        pytest.param(3, TO_V2, id="fail-no-path-to-3"),
        pytest.param(2, {}, id="fail-no-migration"),
    ],
)
def test_fail_schema_without_a_migration_path_changes_nothing(
    tmp_path: Path, version: int, migrations: dict[int, tuple[str, ...]]
) -> None:
    db = SQLiteDatabase(tmp_path / "x.db")
    try:
        db.ensure_schema("part", 1, V1)
        with pytest.raises(ConfigurationError, match="schema version 1"):
            db.ensure_schema("part", version, V2, migrations=migrations)
        assert _version(db) == 1
        columns = [r[1] for r in db.connection().execute("PRAGMA table_info(thing)")]
        assert columns == ["id"]
    finally:
        db.close()


def test_fail_newer_schema_is_never_downgraded(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "x.db")
    try:
        db.ensure_schema("part", 2, V2)
        with pytest.raises(ConfigurationError, match="schema version 2"):
            db.ensure_schema("part", 1, V1, migrations=TO_V2)
        assert _version(db) == 2
    finally:
        db.close()
