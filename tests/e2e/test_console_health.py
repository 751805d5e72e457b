"""The console's CA health page and its sessions over real services: the node probes each
address of [node] ca_system with a TLS handshake under its CA-client identity (a CA system up,
one refusing connections, one whose certificate is not the CA system's, one that never
answers), reads a CA system's /metrics and customer CA CRLs from [console] ca_http (one live
`ca serve --http-listen`, one mirror serving a stale CRL and a forged one); and a session
opened before a restart of the node is still a session after it, while a removed operator's
and an expired one are refused."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from console_fixtures import (
    OPERATOR,
    OPERATOR_PASSWORD,
    VIEWER,
    VIEWER_PASSWORD,
    ConsoleWorld,
    add_operator,
    build_console_world,
    customize,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from node_fixtures import CA_PASSPHRASE, ENV, cli, merge_settings
from tests.support.http_files import HTTPFiles, serving_http
from tests.support.ocsp import http_address
from tests.support.services import start

from ztpki.casystem.directory import CASystemDirectory
from ztpki.node.console.sessions import COOKIE
from ztpki.pki.crl import build_crl

_CONSOLE = re.compile(r"web console on (https://\S+)")
REFUSED = "127.0.0.1:1"  # nothing listens on port 1
GONE = "removable"
GONE_PASSWORD = "removable-password-for-tests"
DP_PATH = "/dp/operational.crl"


@dataclass
class HealthWorld:
    console: ConsoleWorld
    http: str  # the live CA system instance's --http-listen
    mirror: HTTPFiles  # a CRL mirror that stopped being updated
    hang: str  # accepts TCP, never speaks TLS
    live: str  # the live instance's XML listener, first of [node] ca_system
    tokens: dict[str, str]  # session cookies opened before the restart, by operator


def _stale_mirror_routes(world: Any) -> dict[str, Any]:
    """meters: its own CA's CRL, two days past its nextUpdate; operational: a CRL under the
    right name signed by another key; and at the distribution point operational's
    certificates name (DP_PATH), operational's own, fresh."""
    system = CASystemDirectory(world.customer_dir)
    authority = system.load_authority("meters", passphrase=CA_PASSPHRASE.encode())
    then = datetime.now(UTC) - timedelta(days=3)
    stale = build_crl(authority, [], number=7, now=then, next_update=timedelta(days=1))
    own = build_crl(
        system.load_authority("operational", passphrase=CA_PASSPHRASE.encode()),
        [],
        number=3,
        now=datetime.now(UTC) - timedelta(minutes=1),
    )
    operational = x509.load_pem_x509_certificate((world.root / "customer-chain.pem").read_bytes())
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(operational.subject)
        .last_update(then)
        .next_update(then + timedelta(days=30))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    return {
        "/crl/meters.crl": stale.public_bytes(Encoding.DER),
        "/crl/operational.crl": forged.public_bytes(Encoding.DER),
        DP_PATH: own.public_bytes(Encoding.DER),
    }


async def _login(console: ConsoleWorld, name: str, password: str) -> str:
    async with console.client() as client:
        page = await client.login(name, password)
        assert page.status == 303, page.text
        return str(
            client.session.cookie_jar.filter_cookies(aiohttp.client.URL(console.url))[COOKIE].value
        )


async def _get(console: ConsoleWorld, path: str, token: str | None) -> tuple[int, str]:
    cookies = {} if token is None else {COOKIE: token}
    async with (
        aiohttp.ClientSession(cookies=cookies) as session,
        session.get(console.url + path, ssl=console.context(), allow_redirects=False) as answer,
    ):
        return answer.status, await answer.text()


def restart_node(console: ConsoleWorld) -> None:
    """Stop the node, start it again on the same directory (a new console port)."""
    world = console.world
    world.node.stop()
    log = world.root / f"node-{time.monotonic_ns()}.log"
    world.node = start(
        ["node", "serve", "--dir", str(world.node_dir), "--listen", "127.0.0.1:0",
         "--console-listen", "127.0.0.1:0", "--workers", "2"],
        log_path=log,
        env=ENV,
    )  # fmt: skip
    world.services.append(world.node)
    found = _CONSOLE.search(log.read_text())
    assert found, log.read_text()[-2000:]
    console.url = found.group(1).rstrip("/")


@pytest.fixture(scope="module")
def health(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthWorld]:
    root = tmp_path_factory.mktemp("console-health")
    console = build_console_world(root)
    with contextlib.ExitStack() as stack:
        stack.callback(console.stop)
        world = console.world
        hang = stack.enter_context(socket.create_server(("127.0.0.1", 0)))  # never answers
        hang_address = f"127.0.0.1:{hang.getsockname()[1]}"
        mirror = stack.enter_context(serving_http(_stale_mirror_routes(world)))
        # The operational CA names a distribution point in what it issues (on the mirror).
        policy = world.customer_dir / "cas" / "operational" / "policy.toml"
        policy.write_text(
            policy.read_text().replace(
                "\n[revocation]\n", f'\n[revocation]\ncrl_url = "{mirror.url}{DP_PATH}"\n'
            )
        )
        instance = start(
            ["ca", "serve", "--dir", str(world.customer_dir), "--listen", "127.0.0.1:0",
             "--key-workers", "1", "--http-listen", "127.0.0.1:0"],
            log_path=root / "customer-http.log",
            env=ENV,
        )  # fmt: skip
        world.services.append(instance)
        host, port = http_address(instance)
        add_operator(world.node_dir, GONE, "operator", GONE_PASSWORD)
        tokens = {
            name: asyncio.run(_login(console, name, password))
            for name, password in ((VIEWER, VIEWER_PASSWORD), (GONE, GONE_PASSWORD))
        }
        devices = world.make_devices(1, prefix="health")
        cli("node", "set-ca-system", "--dir", str(world.node_dir),
            *(a for address in (instance.address, REFUSED, world.factory.address, hang_address)
              for a in ("--ca", address)))  # fmt: skip
        merge_settings(
            world.node_dir, {"console": {"ca_http": [f"http://{host}:{port}", mirror.url]}}
        )
        restart_node(console)
        # One device issued through the live instance (the first address): its counter has
        # something to say, and its certificate names the distribution point.
        asyncio.run(customize(world, devices))
        yield HealthWorld(
            console, f"http://{host}:{port}", mirror, hang_address, instance.address, tokens
        )


def test_ok_a_session_survives_a_restart_of_the_node_and_the_register_keeps_no_token(
    health: HealthWorld,
) -> None:
    token = health.tokens[VIEWER]
    status, text = asyncio.run(_get(health.console, "/devices", token))
    assert status == 200 and VIEWER in text and 'name="csrf"' in text
    with sqlite3.connect(health.console.node_dir / "node.sqlite") as db:
        dump = "\n".join(db.iterdump())
    assert token not in dump  # only its hash
    assert hashlib.sha256(token.encode()).hexdigest() in dump


def test_fail_a_removed_operators_session_is_refused_and_nothing_else_changed(
    health: HealthWorld,
) -> None:
    console = health.console
    token = health.tokens[GONE]
    register, audit = console.world.register(), console.audit_count()
    out = cli("node", "operators", "--dir", str(console.node_dir), "--remove", GONE)
    assert "sessions are ended" in out
    status, _ = asyncio.run(_get(console, "/", token))
    assert status == 303  # to the login page: no session any more
    assert console.world.register() == register and console.audit_count() == audit
    assert GONE not in cli("node", "operators", "--dir", str(console.node_dir))


def test_fail_a_stolen_expired_token_is_refused(health: HealthWorld) -> None:
    console = health.console
    token = asyncio.run(_login(console, OPERATOR, OPERATOR_PASSWORD))
    assert asyncio.run(_get(console, "/", token))[0] == 200
    # The session's expiry passes (as if its 30 minutes had gone by); the thief still has
    # the cookie.
    past = "2000-01-01T00:00:00.000000Z"
    with sqlite3.connect(console.node_dir / "node.sqlite") as db:
        changed = db.execute(
            "UPDATE console_session SET expires_at = ? WHERE token_hash = ?",
            (past, hashlib.sha256(token.encode()).hexdigest()),
        ).rowcount
    assert changed == 1
    assert asyncio.run(_get(console, "/", token))[0] == 303
    with sqlite3.connect(console.node_dir / "node.sqlite") as db:
        rows = db.execute(
            "SELECT COUNT(*) FROM console_session WHERE token_hash = ?",
            (hashlib.sha256(token.encode()).hexdigest(),),
        ).fetchone()
    assert rows == (0,)  # the expired row is deleted when it is presented


def test_ok_the_health_page_probes_every_ca_system_address_and_names_each_failure(
    health: HealthWorld,
) -> None:
    console = health.console
    status, text = asyncio.run(_get(console, "/health", health.tokens[VIEWER]))
    assert status == 200, text
    probes = _rows(text, "probes")
    live = health.live
    assert ">yes<" in probes[live] and " ms<" in probes[live]
    assert "refused: nothing listens" in probes[REFUSED]
    assert "certificate mismatch" in probes[console.world.factory.address]
    assert "timeout: no handshake within" in probes[health.hang]
    issued = _rows(text, "issued")
    # The live instance issued the device's certificate (label "default", CA "operational")
    # since it started, and counted it: as many as the register holds, so no warning.
    assert re.search(r'data-ca="operational">1\b', issued["default"]), issued
    assert "≠ register" not in issued["default"]
    crls = _rows(text, "customer-crls")
    assert "fresh" in crls[f"{health.http}/crl/operational.crl"]
    assert "fresh" in crls[f"{health.http}/crl/meters.crl"]
    assert "stale: past its next update" in crls[f"{health.mirror.url}/crl/meters.crl"]
    assert "not signed by CA operational" in crls[f"{health.mirror.url}/crl/operational.crl"]
    # The distribution point the issued certificate names, read from the register's copy.
    assert "fresh" in crls[f"{health.mirror.url}{DP_PATH}"]
    assert f"{health.mirror.url}/metrics: HTTP 404" in text
    # Read again: the report made in the background is shown, with its instant; no probe runs
    # on the request path (the hanging address would hold it for the probe's timeout).
    probed = re.search(r'id="health-age">Probed ([^(]+)\(', text)
    assert probed
    again = asyncio.run(_get(console, "/health", health.tokens[VIEWER]))[1]
    assert f'id="health-age">Probed {probed.group(1)}(' in again


def _rows(text: str, table: str) -> dict[str, str]:
    """The rows of the table of id ``table``, by the text of their row header."""
    body = text.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in body.split("<tr")[2:]:
        header = re.search(r'<th scope="row"[^>]*>([^<]*)</th>', row)
        location = re.search(r'<td class="mono">([^<]*)</td>', row)
        if header:
            rows[header.group(1)] = row
        if location:
            rows[location.group(1)] = row
    return rows
