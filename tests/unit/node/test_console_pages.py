"""Pages whose inputs an end-to-end world cannot easily bend, rendered by the console
application in-process (aiohttp's test server, plain HTTP) over a real SQLite register: the
audit page of an altered trail, the health page of fresh, stale and missing factory CRLs and
an unreachable CA system (its probe refused)."""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_console_settings import config

from ztpki.node.console.app import ConsoleContext, build, templates
from ztpki.node.console.health import HealthMonitor
from ztpki.node.console.sessions import COOKIE, LoginThrottle, Sessions
from ztpki.node.factory_crls import FactoryRevocation
from ztpki.store.records import AuditRecord
from ztpki.store.sqlite import open_sqlite_node_store
from ztpki.store.sqlite_console import Role

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def console_context(tmp_path: Path, **kwargs: Any) -> ConsoleContext:
    store = open_sqlite_node_store(tmp_path / "node.sqlite")
    store.add_operator("victor", role=Role.VIEWER, password_hash="!", now=datetime.now(UTC))
    return ConsoleContext(
        config=config(tmp_path),
        store=store,
        sessions=Sessions(store, lifetime=60, idle=60),
        throttle=LoginThrottle(5, 60),
        templates=templates(),
        **kwargs,
    )


def page(context: ConsoleContext, path: str) -> str:
    token, _ = context.sessions.open("victor", Role.VIEWER, how="password")

    async def get() -> str:
        async with TestClient(TestServer(build(context))) as client:
            answer = await client.get(path, cookies={COOKIE: token})
            assert answer.status == 200
            return await answer.text()

    return asyncio.run(get())


def crl_file(path: Path, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, *, days: int) -> str:
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(now - timedelta(days=2))
        .next_update(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_ok_the_health_page_tells_fresh_stale_and_missing_factory_crls(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Acme factory CA")])
    fresh = crl_file(tmp_path / "fresh.crl", key, issuer, days=1)
    stale = crl_file(tmp_path / "stale.crl", key, issuer, days=-1)
    missing = str(tmp_path / "missing.crl")
    crls = FactoryRevocation(
        [("Acme", []), ("Globex", [])], locations={"Acme": [fresh, stale, missing]}
    )
    crls.refresh()
    monitor = HealthMonitor(addresses=("127.0.0.1:1",), tls=ssl.create_default_context())
    context = console_context(tmp_path, factory_crls=crls, health=monitor)
    try:
        text = page(context, "/health")
    finally:
        context.store.close()
    rows = {line for line in text.split("<tr>") if "Acme" in line}
    assert any(fresh in row and ">fresh<" in row for row in rows)
    assert any(stale in row and "stale: past its next update" in row for row in rows)
    assert any(missing in row and "never fetched" in row for row in rows)
    assert "No CRL configured for: Globex" in text
    assert "127.0.0.1:1" in text and '<span class="bad">no</span>' in text  # nothing listens
    assert "refused: nothing listens at this address" in text


def test_fail_an_altered_audit_trail_is_shown_as_not_verifying(tmp_path: Path) -> None:
    context = console_context(tmp_path)
    store = context.store
    store.append_many(
        [AuditRecord(at=T0, endpoint="e", decision="listed", reason=f"r{n}") for n in range(3)]
    )
    try:
        assert "The hash chain verifies: 3 entries" in page(context, "/audit")
        with sqlite3.connect(tmp_path / "node.sqlite") as conn:  # edited behind the node's back
            conn.execute("UPDATE audit_entry SET reason = 'nothing happened' WHERE seq = 2")
        context.verifications.last = None  # the next page verifies again (it would after a minute)
        text = page(context, "/audit")
        assert "The hash chain does NOT verify at entry 2" in text
        assert 'role="alert"' in text
    finally:
        store.close()
