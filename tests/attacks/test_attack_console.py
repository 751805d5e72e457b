"""Attacks on the operator web console (`node serve --console-listen`): changes without a
session, by a viewer, without or with a stolen CSRF token, password guessing, forged session
cookies, a foreign client certificate and one naming nobody, hostile text from the factory
rendered in a page, path traversal under /static, SQL in the search box.

The target is a second `node serve` process on the deployment's register, serving the
console (one register may be served by several node processes). After each case: the
answer, and the register, audit trail and CA records unchanged.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import https_context
from tests.support.console_client import ConsoleClient, Page
from tests.support.operator_pki import OperatorPKI, make_operator_pki
from tests.support.services import Service, start

from ztpki.pki.pem import load_certificates_pem

pytestmark = pytest.mark.timeout(240)

CATEGORY = "console"
OPERATOR, VIEWER = "atk-olga", "atk-victor"
# The password-guessing case's victim: throttled afterwards, so no other case logs in as it.
GUESSED = "atk-gus"
PASSWORD = "a-long-operator-password-" + os.urandom(4).hex()


def _record(report: AttackReport, case: str, attack: str, observed: str, verdict: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=f"console: {attack}",
        observed=observed,
        verdict=verdict,
    )


@dataclass
class ConsoleUnderAttack:
    d: Deployment
    service: Service
    url: str
    pki: OperatorPKI

    def client(self, cert: str | None = None) -> ConsoleClient:
        anchors = self.d.node_anchors
        if cert is None:
            return ConsoleClient(self.url, https_context(key=None, chain=[], anchors=anchors))
        cert_path, key_path = self.pki.cert(cert)
        key = load_pem_private_key(key_path.read_bytes(), password=None)
        chain = load_certificates_pem(cert_path.read_bytes())
        return ConsoleClient(self.url, https_context(key=key, chain=chain, anchors=anchors))  # type: ignore[arg-type]

    async def operator_session(self, name: str) -> ConsoleClient:
        client = self.client()
        page = await client.login(name, PASSWORD)
        assert page.status == 303, page.text
        return client


@pytest.fixture(scope="module")
def console(deployment: Deployment) -> Iterator[ConsoleUnderAttack]:
    d = deployment
    pki = make_operator_pki(d.root / f"operator-pki-{os.urandom(3).hex()}")
    toml = d.node_dir / "node.toml"
    original = toml.read_text()
    # The console reads [console] when it starts; the EST node already running keeps its own.
    toml.write_text(original + f'\n[console]\noperator_ca = "{pki.ca}"\n')
    secret = d.root / "operator-password"
    secret.write_text(PASSWORD)
    for name, role in ((OPERATOR, "operator"), (VIEWER, "viewer"), (GUESSED, "operator")):
        d.cli("node", "add-operator", "--dir", str(d.node_dir), name, "--role", role,
              "--password-file", str(secret), "--replace")  # fmt: skip
    d.cli("node", "add-operator", "--dir", str(d.node_dir), "carol", "--role", "operator",
          "--certificate-only", "--replace")  # fmt: skip
    log = d.logs / f"console-node-{os.urandom(3).hex()}.log"
    try:
        service = start(
            ["node", "serve", "--dir", str(d.node_dir), "--listen", "127.0.0.1:0",
             "--workers", "1", "--console-listen", "127.0.0.1:0"],
            log_path=log,
            env=d.env,
        )  # fmt: skip
    finally:
        toml.write_text(original)
    try:
        text = log.read_text()
        url = text.split("web console on ", 1)[1].split()[0].rstrip("/")
        yield ConsoleUnderAttack(d, service, url, pki)
    finally:
        service.stop()


def _run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


def test_fail_change_without_a_session(
    console: ConsoleUnderAttack, attack_report: AttackReport
) -> None:
    d = console.d
    device = d.take_device()
    before = d.snapshot()

    async def body() -> Page:
        async with console.client() as client:
            return await client.post(
                f"/devices/{device.device_id}/retire", {"confirm": "yes", "csrf": "guess"}
            )

    page = _run(body)
    assert page.status == 401 and "log in first" in page.text
    checked = d.check_unchanged(before)
    _record(
        attack_report,
        "change-without-session",
        "POST /devices/ID/retire with confirm=yes and a guessed CSRF token, no session cookie",
        f"HTTP {page.status} 'log in first'; {checked}",
        "refused",
    )


def test_fail_viewer_changes_the_register(
    console: ConsoleUnderAttack, attack_report: AttackReport
) -> None:
    d = console.d
    device = d.take_device()
    before = d.snapshot()

    async def body() -> list[Page]:
        async with await console.operator_session(VIEWER) as client:
            csrf = (await client.get("/")).csrf  # the viewer's own, valid token
            form = {"confirm": "yes", "csrf": csrf}
            return [
                await client.post(f"/devices/{device.device_id}/{action}", form)
                for action in ("block", "retire")
            ] + [await client.post("/import", form)]

    pages = _run(body)
    assert [p.status for p in pages] == [403, 403, 403]
    assert all(f"{VIEWER} is a viewer" in p.text for p in pages)
    checked = d.check_unchanged(before)
    _record(
        attack_report,
        "viewer-changes",
        "a logged-in viewer POSTs block, retire and a manifest import with its own valid "
        "CSRF token and confirm=yes",
        f"HTTP 403 x3 'only an operator may change the register'; {checked}",
        "refused",
    )


@pytest.mark.parametrize("token", ["missing", "stolen"])
def test_fail_change_without_the_sessions_csrf_token(
    console: ConsoleUnderAttack, attack_report: AttackReport, token: str
) -> None:
    d = console.d
    device = d.take_device()
    before = d.snapshot()

    async def body() -> Page:
        async with await console.operator_session(OPERATOR) as victim:
            stolen = (await victim.get("/")).csrf
        async with await console.operator_session(OPERATOR) as client:
            form = {"confirm": "yes"} | ({"csrf": stolen} if token == "stolen" else {})
            return await client.post(f"/devices/{device.device_id}/block", form)

    page = _run(body)
    assert page.status == 403 and "did not come from the console" in page.text
    checked = d.check_unchanged(before)
    what = (
        "no CSRF token (a forged cross-site form)"
        if token == "missing"
        else "the CSRF token of another session of the same operator"
    )
    _record(
        attack_report,
        f"csrf-{token}",
        f"an operator's session POSTs block with confirm=yes and {what}",
        f"HTTP 403; {checked}",
        "refused",
    )


def test_fail_password_guessing_is_throttled(
    console: ConsoleUnderAttack, attack_report: AttackReport
) -> None:
    d = console.d
    before = d.snapshot()

    async def body() -> tuple[list[Page], Page]:
        async with console.client() as client:
            guesses = [await client.login(GUESSED, f"guess-{n:04d}-password") for n in range(6)]
            # Then the right password: still refused while the name is throttled.
            return guesses, await client.login(GUESSED, PASSWORD)

    guesses, right = _run(body)
    assert [p.status for p in guesses] == [401] * 5 + [429]
    assert right.status == 429
    assert "__Host-ztpki_console=" not in right.headers.get("Set-Cookie", "")
    logged = console.service.log_path.read_text()
    assert PASSWORD not in logged and "guess-0000-password" not in logged  # names only
    checked = d.check_unchanged(before)
    _record(
        attack_report,
        "password-guessing",
        f"6 wrong passwords for operator {GUESSED}, then the right one",
        "HTTP 401 x5, then 429 with Retry-After (the right password too, no session); no "
        f"password in the node's log; {checked}",
        "refused",
    )


def test_fail_forged_session_cookie(
    console: ConsoleUnderAttack, attack_report: AttackReport
) -> None:
    from ztpki.node.console.sessions import COOKIE

    d = console.d
    device = d.take_device()
    before = d.snapshot()

    async def body() -> tuple[Page, Page]:
        async with console.client() as client:
            jar = client.session.cookie_jar
            jar.update_cookies({COOKIE: "A" * 43}, aiohttp.client.URL(console.url))
            page = await client.get("/", follow=False)
            post = await client.post(
                f"/devices/{device.device_id}/block", {"confirm": "yes", "csrf": "A" * 43}
            )
            return page, post

    page, post = _run(body)
    assert page.status == 303 and page.headers["Location"] == "/login"
    assert post.status == 401
    checked = d.check_unchanged(before)
    _record(
        attack_report,
        "forged-session-cookie",
        "a made-up session cookie of the right shape, on a page and on a block",
        f"303 to /login; POST 401; {checked}",
        "refused",
    )


@pytest.mark.parametrize("cert", ["foreign-carol", "mallory"])
def test_fail_client_certificate_not_of_an_operator(
    console: ConsoleUnderAttack, attack_report: AttackReport, cert: str
) -> None:
    d = console.d
    before = d.snapshot()

    async def body() -> str:
        async with console.client(cert) as client:
            try:
                page = await client.get("/", follow=False)
            except (aiohttp.ClientError, ssl.SSLError) as exc:
                return f"TLS handshake refused ({type(exc).__name__})"
            assert page.status == 403 and "not an operator of this node" in page.text
            return "HTTP 403 'not an operator of this node'"

    observed = _run(body)
    if cert == "foreign-carol":
        assert observed.startswith("TLS handshake refused")
    checked = d.check_unchanged(before)
    attack = (
        "a client certificate with CN=carol (an operator's name) from a foreign CA"
        if cert == "foreign-carol"
        else "a client certificate of the operator CA whose CN names no operator"
    )
    _record(attack_report, f"client-cert-{cert}", attack, f"{observed}; {checked}", "refused")


def test_fail_hostile_factory_text_is_escaped_in_pages(
    console: ConsoleUnderAttack, attack_report: AttackReport
) -> None:
    d = console.d
    device_id = f"ACME-XSS-{os.urandom(3).hex()}"
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    d.cli("node", "add", "--dir", str(d.node_dir), device_id, "--fingerprint", "ab" * 32,
          "--model", payload)  # fmt: skip
    before = d.snapshot()

    async def body() -> list[Page]:
        async with await console.operator_session(OPERATOR) as client:
            return [
                await client.get(f"/devices/{device_id}"),
                await client.get(f"/devices?q={device_id}"),
            ]

    pages = _run(body)
    for page in pages:
        assert page.status == 200
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;" in page.text
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    checked = d.check_unchanged(before)
    _record(
        attack_report,
        "stored-xss",
        "a device whose model (factory-supplied text) is a <script> and an <img onerror>, "
        "shown on the device and list pages",
        f"rendered escaped (&lt;script&gt;), CSP script-src 'self'; {checked}",
        "refused",
    )


def test_fail_path_traversal_and_sql_in_queries(
    console: ConsoleUnderAttack, attack_report: AttackReport
) -> None:
    d = console.d
    before = d.snapshot()

    async def body() -> list[Page]:
        async with await console.operator_session(VIEWER) as client:
            return [
                await client.get("/static/../../../node.toml"),
                await client.get("/static/%2e%2e/%2e%2e/templates/base.html"),
                await client.get("/devices?q=%27%20OR%201%3D1%20--"),
                await client.get("/audit?before=1%20OR%201=1"),
            ]

    static1, static2, search, audit = _run(body)
    for page in (static1, static2):
        assert page.status in (403, 404) and "ca_system" not in page.text
    assert search.status == 200 and "No device matches" in search.text
    assert audit.status == 400
    checked = d.check_unchanged(before)
    _record(
        attack_report,
        "traversal-and-sql",
        "GET /static/../../../node.toml (and %2e%2e), a search of ' OR 1=1 --, and an audit "
        "page number with SQL",
        f"static {static1.status}/{static2.status}; search: no device matches; audit 400; "
        f"{checked}",
        "refused",
    )


def test_fail_login_csrf(console: ConsoleUnderAttack, attack_report: AttackReport) -> None:
    d = console.d
    before = d.snapshot()

    async def body() -> Page:
        async with console.client() as client:  # a forged form: no token of the login page
            return await client.post(
                "/login", {"name": OPERATOR, "password": PASSWORD, "login_token": "forged"}
            )

    page = _run(body)
    assert page.status == 403 and "did not come from the console" in page.text
    assert "__Host-ztpki_console" not in page.headers.get("Set-Cookie", "")
    checked = d.check_unchanged(before)
    _record(
        attack_report,
        "login-csrf",
        "a cross-site login form (right name and password, no login token of the console's "
        "login page): logging a victim's browser in as someone else",
        f"HTTP 403, no session cookie; {checked}",
        "refused",
    )
