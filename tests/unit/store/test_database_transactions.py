"""Both engines: groups, one-statement reads and the round trips and commits each counts.

The round-trip figures on PostgreSQL are the point of its transaction shapes (a group's BEGIN
and write lock with its first statement's round trip, no savepoints, a one-statement read with
no BEGIN or COMMIT): a change that adds a round trip fails here. Without savepoints a unit on
PostgreSQL that fails after writing cannot be undone alone: the group is given up whole
(GroupAborted, nothing committed), which the register answers by running its calls one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_backends import KINDS, locator_for

from ztpki.errors import StorageError
from ztpki.store.sql import Database, GroupAborted
from ztpki.store.sqlite import open_database


@pytest.fixture(params=KINDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with locator_for(request.param, tmp_path) as locator:
        where = str(Path(locator) / "x.db") if request.param == "sqlite" else locator
        database = open_database(where)
        try:
            with database.write() as conn:
                conn.execute("CREATE TABLE item (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
            yield database
        finally:
            database.close()


def names(db: Database) -> list[str]:
    with db.read() as conn:
        return [str(row[0]) for row in conn.execute("SELECT name FROM item ORDER BY name")]


def spent(db: Database, before: dict[str, int]) -> dict[str, int]:
    return {key: value - before[key] for key, value in db.counters.snapshot().items()}


def group_of_three(db: Database, failing: str) -> None:
    """Units a, b, c each insert their name; unit b raises after its insert."""
    with db.group():
        for name in ("a", "b", "c"):
            try:
                with db.write() as conn:
                    conn.execute("INSERT INTO item (name, n) VALUES (?, 1)", (name,))
                    if name == failing:
                        raise ValueError("this unit fails after its insert")
            except ValueError:
                pass
        with db.write() as conn:  # a unit after the failed one still sees the earlier units
            assert conn.execute("SELECT COUNT(*) FROM item").fetchone()[0] == 2


def test_ok_a_unit_failing_after_its_write_is_undone_alone_or_gives_the_group_up(
    db: Database,
) -> None:
    before = db.counters.snapshot()
    if db.dialect == "sqlite":  # a savepoint per unit: undone alone, the others commit
        group_of_three(db, failing="b")
        assert names(db) == ["a", "c"]
        return
    # No savepoints on PostgreSQL: the group is given up whole, and so is every later unit.
    with pytest.raises(GroupAborted, match="nothing of the group took effect") as aborted:
        group_of_three(db, failing="b")
    assert isinstance(aborted.value.__cause__, ValueError)
    assert names(db) == []
    assert spent(db, before)["commits_write"] == 0


def test_ok_a_unit_failing_before_it_changed_a_row_leaves_the_group_going(db: Database) -> None:
    with db.group():
        for name in ("a", "b", "c"):
            try:
                with db.write() as conn:
                    conn.execute("UPDATE item SET n = 2 WHERE name = ?", (name,))  # no such row
                    if name == "b":
                        raise ValueError("this unit fails, having changed nothing")
                    conn.execute("INSERT INTO item (name, n) VALUES (?, 1)", (name,))
            except ValueError:
                pass
    assert names(db) == ["a", "c"]


def test_fail_a_refused_unit_leaves_the_group_usable_or_gives_it_up(db: Database) -> None:
    with db.write() as conn:
        conn.execute("INSERT INTO item (name, n) VALUES ('a', 1)")

    def group() -> None:
        with db.group():
            with pytest.raises(StorageError), db.write() as conn:
                conn.execute("INSERT INTO item (name, n) VALUES ('b', 1)")
                conn.execute("INSERT INTO item (name, n) VALUES ('a', 2)")  # duplicate key
            with db.write() as conn:
                conn.execute("INSERT INTO item (name, n) VALUES ('c', 1)")

    if db.dialect == "sqlite":
        group()
        assert names(db) == ["a", "c"]
    else:  # PostgreSQL refuses the rest of a transaction after an error: nothing of it lands
        with pytest.raises(GroupAborted):
            group()
        assert names(db) == ["a"]
    with db.read(single=True) as conn:
        assert conn.execute("SELECT n FROM item WHERE name = 'a'").fetchone()[0] == 1


def test_ok_counters_count_commits_by_kind(db: Database) -> None:
    before = db.counters.snapshot()
    with db.write() as conn:
        conn.execute("INSERT INTO item (name, n) VALUES ('a', 1)")
    with db.read() as conn:
        conn.execute("SELECT n FROM item").fetchall()
    with db.read(single=True) as conn:
        conn.execute("SELECT n FROM item").fetchall()
    with db.group():
        for name in ("b", "c"):
            with db.write() as conn:
                conn.execute("INSERT INTO item (name, n) VALUES (?, 1)", (name,))
    used = spent(db, before)
    assert used["commits_write"] == 2 and used["commits_read"] == 2
    assert db.counters.engine == db.dialect
    if db.dialect == "postgresql":
        # write: BEGIN+lock, INSERT, COMMIT; read: BEGIN, SELECT, COMMIT; single read: SELECT;
        # group of two: BEGIN+lock, INSERT, INSERT, COMMIT.
        assert used["round_trips"] == 3 + 3 + 1 + 4
    else:
        assert used["round_trips"] >= 4  # every statement SQLite ran


def test_ok_a_refused_write_commits_nothing_and_counts_no_commit(db: Database) -> None:
    before = db.counters.snapshot()
    with pytest.raises(StorageError), db.write() as conn:
        conn.execute("INSERT INTO item (name, n) VALUES ('a', 1)")
        conn.execute("INSERT INTO item (name, n) VALUES ('a', 1)")
    assert spent(db, before)["commits_write"] == 0
    assert names(db) == []


def test_ok_an_empty_group_commits_nothing(db: Database) -> None:
    before = db.counters.snapshot()
    with db.group():
        pass
    used = spent(db, before)
    if db.dialect == "postgresql":
        assert used["round_trips"] == 0 and used["commits_write"] == 0  # not even a BEGIN
    assert names(db) == []


def test_fail_one_statement_read_refuses_a_second_statement_on_postgresql(db: Database) -> None:
    with db.read(single=True) as conn:
        conn.execute("SELECT COUNT(*) FROM item").fetchone()
        if db.dialect == "postgresql":
            # Outside a transaction the second statement would see another snapshot.
            with pytest.raises(RuntimeError, match="one-statement read"):
                conn.execute("SELECT COUNT(*) FROM item")
