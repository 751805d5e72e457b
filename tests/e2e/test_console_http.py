"""The web console over real HTTPS (aiohttp client, one cookie jar per browser): logins,
roles, CSRF, client certificates, the pages and the changes. Every refusal is paired with a
check that nothing changed: register and audit trail as before."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from console_fixtures import (
    CERT_OPERATOR,
    OPERATOR,
    OPERATOR_PASSWORD,
    VIEWER,
    VIEWER_PASSWORD,
    ConsoleClient,
    ConsoleWorld,
    Page,
    build_console_world,
    customize,
    tampered,
)

from ztpki.node.console.sessions import COOKIE


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleWorld]:
    c = build_console_world(tmp_path_factory.mktemp("console-http"))
    try:
        yield c
    finally:
        c.stop()


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


def unchanged(console: ConsoleWorld, action: Callable[[], Awaitable[Page]]) -> Page:
    """Run a refused action; assert that the register and the audit trail did not change."""
    register, audit = console.world.register(), console.audit_count()
    page = run(action)
    assert console.world.register() == register, "a refused request changed the register"
    assert console.audit_count() == audit, "a refused request wrote the audit trail"
    return page


async def logged_in(console: ConsoleWorld, name: str, password: str) -> ConsoleClient:
    client = console.client()
    page = await client.login(name, password)
    assert page.status == 303 and page.headers["Location"] == "/", page.text
    return client


# --------------------------------------------------------------------------- reading


def test_ok_an_operator_logs_in_with_a_password_and_reads_every_page(
    console: ConsoleWorld,
) -> None:
    (device,) = console.world.make_devices(1)

    async def body() -> None:
        async with console.client() as client:
            page = await client.login(OPERATOR, OPERATOR_PASSWORD)
            cookie = page.headers["Set-Cookie"]
            assert cookie.startswith(f"{COOKIE}=")
            for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
                assert attribute in cookie
            overview = await client.get("/")
            assert overview.status == 200 and "Fleet overview" in overview.text
            assert "Customizations per minute" in overview.text
            assert overview.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert overview.headers["X-Frame-Options"] == "DENY"
            listing = await client.get(f"/devices?q={device.device_id}")
            assert device.device_id in listing.text
            detail = await client.get(f"/devices/{device.device_id}")
            assert "temporary (factory)" in detail.text
            assert device.fingerprint in detail.text
            audit = await client.get("/audit")
            assert "The hash chain verifies" in audit.text
            health = await client.get("/health")
            assert console.world.customer.address in health.text and ">yes<" in health.text
            assert (await client.get("/import")).status == 200

    run(body)


def test_ok_the_live_overview_counts_a_small_fleet_run(console: ConsoleWorld) -> None:
    devices = console.world.make_devices(3)

    async def body() -> None:
        async with await logged_in(console, VIEWER, VIEWER_PASSWORD) as client:
            before = await client.get("/live")
            await customize(console.world, devices)
            after = await client.get("/live")
            assert before.status == after.status == 200
            assert "<html" not in after.text  # a fragment, swapped into the page

            def customized(page: Page) -> int:
                marker = 'id="count-customized">'
                start = page.text.index(marker) + len(marker)
                return int(page.text[start : page.text.index("<", start)])

            def last_hour(page: Page) -> int:
                marker = 'id="last-hour">'
                start = page.text.index(marker) + len(marker)
                return int(page.text[start : page.text.index("<", start)])

            assert customized(after) == customized(before) + 3
            assert last_hour(after) == last_hour(before) + 3

    run(body)


def test_ok_the_device_list_filters_and_pages_on_the_server(console: ConsoleWorld) -> None:
    devices = console.world.make_devices(3, prefix="page")
    prefix = devices[0].device_id.rsplit("-", 1)[0]

    async def body() -> None:
        async with await logged_in(console, VIEWER, VIEWER_PASSWORD) as client:
            found = await client.get(f"/devices?q={prefix}")
            assert all(d.device_id in found.text for d in devices)
            page = await client.get(f"/devices?q={prefix}&after={devices[0].device_id}")
            assert devices[0].device_id not in page.text.split("<tbody>")[1]
            assert devices[1].device_id in page.text
            listed = await client.get(f"/devices?q={prefix}&state=listed&blocked=no")
            assert devices[2].device_id in listed.text
            none = await client.get(f"/devices?q={prefix}&state=customized")
            assert "No device matches" in none.text
            bad = await client.get("/devices?state=bogus")
            assert bad.status == 400 and "unknown filter value" in bad.text

    run(body)


# --------------------------------------------------------------------------- refusals


def test_fail_without_a_session_pages_redirect_and_changes_are_refused(
    console: ConsoleWorld,
) -> None:
    (device,) = console.world.make_devices(1)

    async def body() -> Page:
        async with console.client() as client:
            page = await client.get("/devices", follow=False)
            assert page.status == 303 and page.headers["Location"] == "/login"
            assert (await client.get("/live", follow=False)).status == 303
            return await client.post(
                f"/devices/{device.device_id}/block", {"confirm": "yes", "csrf": "x"}
            )

    page = unchanged(console, body)
    assert page.status == 401 and "log in first" in page.text
    assert console.world.state(device.device_id) == "listed"


def test_fail_a_wrong_password_and_an_unknown_name_get_no_session(console: ConsoleWorld) -> None:
    async def body() -> list[Page]:
        async with console.client() as client:
            pages = [
                await client.login(OPERATOR, OPERATOR_PASSWORD + "x"),
                await client.login("nobody-at-all", OPERATOR_PASSWORD),
            ]
            pages.append(await client.get("/", follow=False))
            return pages

    wrong, unknown, after = run(body)
    for page in (wrong, unknown):
        assert page.status == 401 and "wrong name or password" in page.text
        assert f"{COOKIE}=" not in page.headers.get("Set-Cookie", "")  # no session
    assert after.status == 303  # still not logged in


def test_fail_repeated_failed_logins_are_throttled(console: ConsoleWorld) -> None:
    async def body() -> list[Page]:
        async with console.client() as client:
            return [await client.login("throttled-name", "not the password") for _ in range(6)]

    pages = run(body)
    assert [p.status for p in pages] == [401] * 5 + [429]
    assert "too many failed logins" in pages[-1].text and int(pages[-1].headers["Retry-After"]) > 0


def test_fail_a_viewer_cannot_block_retire_or_import_and_nothing_changed(
    console: ConsoleWorld,
) -> None:
    (device,) = console.world.make_devices(1)

    async def body() -> list[Page]:
        async with await logged_in(console, VIEWER, VIEWER_PASSWORD) as client:
            detail = await client.get(f"/devices/{device.device_id}")
            assert 'id="block"' not in detail.text  # no action offered to a viewer
            csrf = detail.csrf  # the logout form's: a valid token of this session
            return [
                await client.get(f"/devices/{device.device_id}/block"),
                await client.post(
                    f"/devices/{device.device_id}/block", {"csrf": csrf, "confirm": "yes"}
                ),
                await client.post(
                    f"/devices/{device.device_id}/retire", {"csrf": csrf, "confirm": "yes"}
                ),
                await client.post("/import", {"csrf": csrf, "confirm": "yes"}),
            ]

    pages = unchanged(console, lambda: body())  # type: ignore[arg-type,return-value]
    for page in pages:  # type: ignore[attr-defined]
        assert page.status == 403 and f"{VIEWER} is a viewer" in page.text
    assert console.world.state(device.device_id) == "listed"


@pytest.mark.parametrize("csrf", [None, "", "forged-token"], ids=["missing", "empty", "forged"])
def test_fail_a_change_without_the_csrf_token_is_refused_and_nothing_changed(
    console: ConsoleWorld, csrf: str | None
) -> None:
    (device,) = console.world.make_devices(1)

    async def body() -> Page:
        async with await logged_in(console, OPERATOR, OPERATOR_PASSWORD) as client:
            form = {"confirm": "yes"} | ({} if csrf is None else {"csrf": csrf})
            return await client.post(f"/devices/{device.device_id}/block", form)

    page = unchanged(console, body)
    assert page.status == 403 and "did not come from the console" in page.text
    assert console.world.state(device.device_id) == "listed"


def test_fail_a_csrf_token_of_another_session_is_refused(console: ConsoleWorld) -> None:
    (device,) = console.world.make_devices(1)

    async def body() -> Page:
        async with await logged_in(console, OPERATOR, OPERATOR_PASSWORD) as other:
            stolen = (await other.get("/")).csrf
        async with await logged_in(console, OPERATOR, OPERATOR_PASSWORD) as client:
            return await client.post(
                f"/devices/{device.device_id}/block", {"csrf": stolen, "confirm": "yes"}
            )

    assert unchanged(console, body).status == 403


def test_fail_a_change_without_its_confirmation_is_refused(console: ConsoleWorld) -> None:
    (device,) = console.world.make_devices(1)

    async def body() -> Page:
        async with await logged_in(console, OPERATOR, OPERATOR_PASSWORD) as client:
            csrf = (await client.get("/")).csrf
            return await client.post(f"/devices/{device.device_id}/retire", {"csrf": csrf})

    page = unchanged(console, body)
    assert page.status == 400 and "confirm" in page.text


# --------------------------------------------------------------------------- changes


def test_ok_an_operator_blocks_unblocks_and_retires_named_in_the_audit(
    console: ConsoleWorld,
) -> None:
    (device,) = console.world.make_devices(1)
    device_id = device.device_id

    async def change(client: ConsoleClient, action: str, **extra: str) -> None:
        confirm = await client.get(f"/devices/{device_id}/{action}")
        assert confirm.status == 200 and 'name="confirm" value="yes"' in confirm.text
        done = await client.post(
            f"/devices/{device_id}/{action}", {"csrf": confirm.csrf, "confirm": "yes", **extra}
        )
        assert done.status == 303 and done.headers["Location"] == f"/devices/{device_id}"

    async def body() -> None:
        async with await logged_in(console, OPERATOR, OPERATOR_PASSWORD) as client:
            await change(client, "block")
            assert console.world.state(device_id) == "blocked"
            assert (
                'id="state" class="state state-blocked"'
                in (await client.get(f"/devices/{device_id}")).text
            )
            await change(client, "unblock")
            assert console.world.state(device_id) == "listed"
            await change(client, "retire", reason="keyCompromise")
            assert console.world.state(device_id) == "retired"
            again = await client.post(
                f"/devices/{device_id}/block",
                {"csrf": (await client.get("/")).csrf, "confirm": "yes"},
            )
            assert again.status == 409 and "retired; nothing to do" in again.text

    run(body)
    entries = console.world.audit(device_id)
    mine = [e for e in entries if e["endpoint"].startswith("console/")]
    assert [e["decision"] for e in mine] == ["blocked", "unblocked", "retired"]
    assert all(f"by operator {OPERATOR} in the web console" in e["reason"] for e in mine)


def test_ok_an_operator_imports_a_signed_manifest_and_a_forged_one_lists_nothing(
    console: ConsoleWorld,
) -> None:
    devices = console.world.make_devices(2, listed=False, prefix="imported")
    manifest = console.world.sign_manifest([(d.device_id, d.fingerprint) for d in devices])
    forged = tampered(manifest.read_bytes(), "imported-forged")

    async def upload(client: ConsoleClient, content: bytes) -> Page:
        csrf = (await client.get("/import")).csrf
        form = aiohttp.FormData()
        form.add_field("csrf", csrf)
        form.add_field("manifest", content, filename="manifest.json")
        return await client.post("/import", form)

    async def forged_upload() -> Page:
        async with await logged_in(console, OPERATOR, OPERATOR_PASSWORD) as client:
            return await upload(client, forged)

    register = console.world.register()
    refused = run(forged_upload)
    assert refused.status == 409 and "signature does not verify" in refused.text
    assert console.world.register() == register  # nothing listed

    async def body() -> tuple[Page, Page, Page]:
        async with await logged_in(console, OPERATOR, OPERATOR_PASSWORD) as client:
            shown = await upload(client, manifest.read_bytes())
            token = re.search(r'name="upload" value="([^"]+)"', shown.text)
            assert token, shown.text
            listed_before = console.world.register()
            unconfirmed = await client.post(
                "/import/confirm", {"csrf": shown.csrf, "upload": token.group(1)}
            )
            assert console.world.register() == listed_before  # nothing until confirmed
            done = await client.post(
                "/import/confirm",
                {"csrf": shown.csrf, "upload": token.group(1), "confirm": "yes"},
            )
            return shown, unconfirmed, done

    shown, unconfirmed, done = run(body)
    assert shown.status == 200 and 'id="device-count">2<' in shown.text
    assert unconfirmed.status == 400
    assert done.status == 200 and "Imported: 2 device(s) listed" in done.text
    assert all(console.world.state(d.device_id) == "listed" for d in devices)
    imports = [e for e in console.audit_all() if e["endpoint"] == "console/import"]
    assert [e["decision"] for e in imports] == ["refused", "imported"]
    assert all(f"by operator {OPERATOR}" in e["reason"] for e in imports)


def test_fail_an_upload_is_confirmed_only_by_the_operator_who_made_it(
    console: ConsoleWorld,
) -> None:
    devices = console.world.make_devices(1, listed=False, prefix="upload")
    manifest = console.world.sign_manifest([(d.device_id, d.fingerprint) for d in devices])

    async def body() -> Page:
        async with await logged_in(console, OPERATOR, OPERATOR_PASSWORD) as olga:
            form = aiohttp.FormData()
            form.add_field("csrf", (await olga.get("/import")).csrf)
            form.add_field("manifest", manifest.read_bytes(), filename="m.json")
            token = re.search(
                r'name="upload" value="([^"]+)"', (await olga.post("/import", form)).text
            )
            assert token
        async with console.client(cert=CERT_OPERATOR) as carol:  # another operator
            csrf = (await carol.get("/")).csrf
            return await carol.post(
                "/import/confirm", {"csrf": csrf, "upload": token.group(1), "confirm": "yes"}
            )

    page = unchanged(console, body)
    assert page.status == 400 and "upload the manifest again" in page.text


def test_ok_logging_out_ends_the_session_on_the_server(console: ConsoleWorld) -> None:
    async def body() -> None:
        client = await logged_in(console, VIEWER, VIEWER_PASSWORD)
        async with client:
            url = aiohttp.client.URL(console.url)
            token = client.session.cookie_jar.filter_cookies(url)[COOKIE].value
            csrf = (await client.get("/")).csrf
            assert (await client.post("/logout", {"csrf": csrf})).status == 303
        async with console.client() as replay:  # the old cookie, kept by an attacker
            replay.session.cookie_jar.update_cookies(
                {COOKIE: token}, aiohttp.client.URL(console.url)
            )
            assert (await replay.get("/", follow=False)).status == 303

    run(body)


# --------------------------------------------------------------------------- certificates


def test_ok_a_client_certificate_of_the_operator_ca_logs_its_operator_in(
    console: ConsoleWorld,
) -> None:
    (device,) = console.world.make_devices(1)

    async def body() -> None:
        async with console.client(cert=CERT_OPERATOR) as client:
            overview = await client.get("/", follow=False)
            assert overview.status == 200 and f"{CERT_OPERATOR} <span" in overview.text
            confirm = await client.get(f"/devices/{device.device_id}/block")
            done = await client.post(
                f"/devices/{device.device_id}/block", {"csrf": confirm.csrf, "confirm": "yes"}
            )
            assert done.status == 303

    run(body)
    assert console.world.state(device.device_id) == "blocked"
    (entry,) = [e for e in console.world.audit(device.device_id) if e["decision"] == "blocked"]
    assert f"by operator {CERT_OPERATOR}" in entry["reason"]


def test_fail_a_certificate_of_the_operator_ca_naming_no_operator_is_refused(
    console: ConsoleWorld,
) -> None:
    async def body() -> Page:
        async with console.client(cert="mallory") as client:
            return await client.get("/", follow=False)

    page = unchanged(console, body)
    assert page.status == 403 and "not an operator of this node" in page.text


def test_fail_a_foreign_client_certificate_is_refused_in_the_tls_handshake(
    console: ConsoleWorld,
) -> None:
    async def body() -> None:
        async with console.client(cert="foreign-carol") as client:
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                await client.get("/", follow=False)

    register, audit = console.world.register(), console.audit_count()
    run(body)
    assert console.world.register() == register and console.audit_count() == audit


def test_fail_a_request_after_a_session_on_the_same_connection_gets_none_of_it(
    console: ConsoleWorld,
) -> None:
    async def body() -> Page:
        async with await logged_in(console, OPERATOR, OPERATOR_PASSWORD) as client:
            assert "Log out" in (await client.get("/")).text
            client.session.cookie_jar.clear()  # the next request, kept alive, has no cookie
            return await client.get("/login")

    page = run(body)
    assert page.status == 200 and "Log out" not in page.text and 'name="csrf"' not in page.text


def test_ok_with_workers_exactly_one_process_serves_the_console(console: ConsoleWorld) -> None:
    log = (console.world.root / "node.log").read_text()
    assert "serving with 2 workers" in log
    assert len(re.findall(r"worker 1 \(pid \d+\) starting", log)) >= 1
    # One console per start of worker 0 (a test below kills it), none for worker 1.
    assert log.count("ztpki.node.console.server: web console on") == console_starts(log)


def console_starts(log: str) -> int:
    return len(re.findall(r"worker 0 \(pid \d+\) starting", log))


def test_ok_a_killed_worker_0_is_replaced_and_its_replacement_serves_the_console_and_sessions(
    console: ConsoleWorld,
) -> None:
    log_path = console.world.root / "node.log"
    (first,) = re.findall(r"worker 0 \(pid (\d+)\) serving", log_path.read_text())

    async def session() -> str:
        async with await logged_in(console, VIEWER, VIEWER_PASSWORD) as client:
            jar = client.session.cookie_jar.filter_cookies(aiohttp.client.URL(console.url))
            return str(jar[COOKIE].value)

    token = run(session)
    os.kill(int(first), signal.SIGKILL)

    async def body() -> tuple[Page, Page]:
        # Queued on the listening socket the supervisor keeps until the new worker 0 accepts.
        async with console.client() as client:
            login = await client.get("/login")
            # The session opened in the killed process: kept in the register, still open.
            client.session.cookie_jar.update_cookies(
                {COOKIE: token}, aiohttp.client.URL(console.url)
            )
            return login, await client.get("/", follow=False)

    page, kept = run(body)
    assert page.status == 200 and "Log in to the node console" in page.text
    assert kept.status == 200 and VIEWER in kept.text
    log = log_path.read_text()
    assert console_starts(log) >= 2
    assert log.count("ztpki.node.console.server: web console on") == console_starts(log)
