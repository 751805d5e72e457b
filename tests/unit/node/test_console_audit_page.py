"""The audit page tells whether the hash chain verifies: the console application in-process
(aiohttp's test server, plain HTTP) over a real SQLite register whose trail is then altered."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from ztpki.node.config import NodeConfig
from ztpki.node.console.app import ConsoleContext, build, templates
from ztpki.node.console.sessions import COOKIE, LoginThrottle, Sessions
from ztpki.store.records import AuditRecord
from ztpki.store.sqlite import open_sqlite_node_store
from ztpki.store.sqlite_console import Role

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_fail_an_altered_audit_trail_is_shown_as_not_verifying(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    store = open_sqlite_node_store(path)
    store.append_many(
        [AuditRecord(at=T0, endpoint="e", decision="listed", reason=f"r{n}") for n in range(3)]
    )
    config = NodeConfig(
        directory=tmp_path,
        ca_system="127.0.0.1:1",
        ca_client=Path("c"),
        server_cert=Path("s"),
        server_key=Path("k"),
        manufacturers=(),
        labels=(),
    )
    context = ConsoleContext(
        config=config,
        store=store,
        sessions=Sessions(lifetime=60),
        throttle=LoginThrottle(5, 60),
        templates=templates(),
    )
    token, _ = context.sessions.open("victor", Role.VIEWER, how="password")

    async def page() -> str:
        async with TestClient(TestServer(build(context))) as client:
            answer = await client.get("/audit", cookies={COOKIE: token})
            assert answer.status == 200
            return await answer.text()

    try:
        assert "The hash chain verifies: 3 entries" in asyncio.run(page())
        with sqlite3.connect(path) as conn:  # someone edits the trail behind the node's back
            conn.execute("UPDATE audit_entry SET reason = 'nothing happened' WHERE seq = 2")
        context.verification = None  # the next page verifies again (it would after a minute)
        text = asyncio.run(page())
        assert "The hash chain does NOT verify at entry 2" in text
        assert 'role="alert"' in text
    finally:
        store.close()
