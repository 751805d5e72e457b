"""`ztpki node policy` names the XML enrollment protocol its CA-client speaks and the schema of
the register's database, in its text and in every --json row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_node_cli as node_cli

from ztpki.protocol import PROTOCOL_VERSION
from ztpki.store import sqlite_register
from ztpki.store.sqlite import open_sqlite_node_store

env = node_cli.env
inputs = node_cli.inputs


def test_ok_policy_shows_protocol_and_register_schema(
    inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # the line unwrapped, long temporary path and all
    assert node_cli.run(*node_cli.init_args(inputs))[0] == 0
    node = str(inputs["node"])
    database = inputs["node"] / "node.sqlite"
    open_sqlite_node_store(database).close()

    status, out = node_cli.run("node", "policy", "--dir", node)
    assert status == 0
    assert (
        f"versions: XML enrollment protocol {PROTOCOL_VERSION}; customer_node database schema "
        f"{sqlite_register.SCHEMA_VERSION} ({database})"
    ) in out.splitlines()
    status, out = node_cli.run("node", "policy", "--dir", node, "--json")
    assert status == 0
    assert [row["versions"] for row in json.loads(out)] == [
        {
            "protocol": PROTOCOL_VERSION,
            "schema": sqlite_register.SCHEMA_VERSION,
            "database_schema": sqlite_register.SCHEMA_VERSION,
        }
    ]
