"""ztpki's CMP client (device/cmp_client.py) against OpenSSL's CMP mock server: ir + certConf,
cr, kur, p10cr, genm, rr and polling, each with a refusal or a negative control."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.cmp_mock import MockPKI, mock_server, name

from ztpki.device.cmp_client import CMPClient
from ztpki.device.cmp_transaction import CMPRefused, Credentials
from ztpki.errors import Unavailable, VerificationFailed
from ztpki.pki.chain import verify_cmp_signer_chain
from ztpki.protocol.cmp import BodyType, FailInfo


def trusting(anchors: Sequence[x509.Certificate]):  # type: ignore[no-untyped-def]
    def check(leaf: x509.Certificate, others: Sequence[x509.Certificate], now: datetime) -> None:
        verify_cmp_signer_chain(leaf, others, anchors, now=now)

    return check


@pytest.fixture(scope="module")
def pki() -> MockPKI:
    return MockPKI.create()


def client(pki: MockPKI, url: str, **kwargs: object) -> CMPClient:
    credentials = Credentials(pki.device_key, pki.device, ())
    return CMPClient(url, credentials, trusting([pki.ca]), **kwargs)  # type: ignore[arg-type]


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


@pytest.mark.parametrize("kind", [BodyType.IR, BodyType.CR], ids=lambda k: f"ok-{k.value}")
def test_ok_enroll_and_confirm(pki: MockPKI, tmp_path: Path, kind: BodyType) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    issued = pki.issue(new_key, "device-0001")
    with mock_server(tmp_path, pki, response=issued) as url:

        async def run() -> None:
            async with client(pki, url) as cmp:
                enrolled = await cmp.enroll(kind, new_key)
                assert enrolled.certificate == issued
                # caPubs come with an ip only (RFC 9483 section 4.1.1).
                assert (pki.ca in enrolled.ca_pubs) is (kind is BodyType.IR)
                await cmp.confirm(enrolled)

        asyncio.run(run())


def test_ok_kur_names_the_certificate_it_updates(pki: MockPKI, tmp_path: Path) -> None:
    # OpenSSL's mock server checks kur's oldCertID against the certificate it answers with,
    # so it answers with the device's own: a positive check of our oldCertID control.
    with mock_server(tmp_path, pki, response=pki.device) as url:

        async def run() -> None:
            async with client(pki, url) as cmp:
                enrolled = await cmp.enroll(BodyType.KUR, pki.device_key, updating=pki.device)
                await cmp.confirm(enrolled)

        asyncio.run(run())


def test_fail_kur_naming_another_certificate(pki: MockPKI, tmp_path: Path) -> None:
    with mock_server(tmp_path, pki, response=pki.device) as url:

        async def run() -> None:
            async with client(pki, url) as cmp:
                await cmp.enroll(BodyType.KUR, pki.device_key, updating=pki.server)

        with pytest.raises(CMPRefused, match="badRequest"):
            asyncio.run(run())


def test_ok_p10cr(pki: MockPKI, tmp_path: Path) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    issued = pki.issue(new_key, "device-0001")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name("device-0001"))
        .sign(new_key, hashes.SHA256())
    )
    with mock_server(tmp_path, pki, response=issued) as url:

        async def run() -> None:
            async with client(pki, url) as cmp:
                enrolled = await cmp.enroll_p10(csr)
                assert enrolled.certificate == issued
                await cmp.confirm(enrolled)

        asyncio.run(run())


def test_fail_issued_certificate_for_another_key(pki: MockPKI, tmp_path: Path) -> None:
    with mock_server(tmp_path, pki, response=pki.device) as url:

        async def run() -> None:
            async with client(pki, url) as cmp:
                await cmp.enroll(BodyType.IR, ec.generate_private_key(ec.SECP256R1()))

        with pytest.raises(VerificationFailed, match="does not carry the device's key"):
            asyncio.run(run())


def test_fail_server_not_trusted(pki: MockPKI, tmp_path: Path) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    stranger = MockPKI.create()
    with mock_server(tmp_path, pki, response=pki.issue(new_key, "device-0001")) as url:

        async def run() -> None:
            credentials = Credentials(pki.device_key, pki.device, ())
            async with CMPClient(url, credentials, trusting([stranger.ca])) as cmp:
                await cmp.enroll(BodyType.IR, new_key)

        with pytest.raises(VerificationFailed, match="CMP signer certificate does not verify"):
            asyncio.run(run())


def test_ok_polls_while_the_server_waits(pki: MockPKI, tmp_path: Path) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    issued = pki.issue(new_key, "device-0001")
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    options = ["-poll_count", "3", "-check_after", "2"]
    with mock_server(tmp_path, pki, response=issued, options=options) as url:

        async def run() -> int:
            async with client(pki, url, wait=record) as cmp:
                enrolled = await cmp.enroll(BodyType.IR, new_key)
                assert enrolled.certificate == issued
                await cmp.confirm(enrolled)
                return cmp.polls

        assert asyncio.run(run()) == 3
    assert waits[1:] == [2, 2]


def test_fail_gives_up_after_max_polls(pki: MockPKI, tmp_path: Path) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    options = ["-poll_count", "5", "-check_after", "1"]
    with mock_server(tmp_path, pki, response=pki.issue(new_key, "d"), options=options) as url:

        async def run() -> None:
            async with client(pki, url, wait=no_wait, max_polls=2) as cmp:
                await cmp.enroll(BodyType.IR, new_key)

        with pytest.raises(Unavailable, match="still waiting for its CA after 2 polls"):
            asyncio.run(run())


def test_fail_server_rejects_with_fail_info(pki: MockPKI, tmp_path: Path) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    options = ["-pkistatus", "2", "-failure", "23", "-statusstring", "device is blocked"]
    with mock_server(tmp_path, pki, response=pki.issue(new_key, "d"), options=options) as url:

        async def run() -> None:
            async with client(pki, url) as cmp:
                await cmp.enroll(BodyType.IR, new_key)

        with pytest.raises(CMPRefused, match="notAuthorized") as caught:
            asyncio.run(run())
    assert caught.value.status.fail_info == frozenset({FailInfo.NOT_AUTHORIZED})
    assert "device is blocked" in caught.value.message


def test_ok_revoke(pki: MockPKI, tmp_path: Path) -> None:
    with mock_server(tmp_path, pki, response=pki.device) as url:

        async def run() -> None:
            async with client(pki, url) as cmp:
                await cmp.revoke(pki.device, x509.ReasonFlags.key_compromise)

        asyncio.run(run())


def test_fail_revoke_refused(pki: MockPKI, tmp_path: Path) -> None:
    options = ["-pkistatus", "2", "-failure", "4"]
    with mock_server(tmp_path, pki, response=pki.device, options=options) as url:

        async def run() -> None:
            async with client(pki, url) as cmp:
                await cmp.revoke(pki.device)

        with pytest.raises(CMPRefused, match="badCertId"):
            asyncio.run(run())


def test_ok_genm(pki: MockPKI, tmp_path: Path) -> None:
    # OpenSSL 3.0's mock server answers a genm with the request's own items (it knows no
    # infoType): enough to check the exchange, protection and nonces end to end.
    from ztpki.protocol.cmp import InfoTypeAndValue

    with mock_server(tmp_path, pki, response=pki.device) as url:

        async def run() -> tuple[InfoTypeAndValue, ...]:
            async with client(pki, url) as cmp:
                return await cmp.general([InfoTypeAndValue("1.3.6.1.5.5.7.4.17")])

        items = asyncio.run(run())
    assert [i.oid for i in items] == ["1.3.6.1.5.5.7.4.17"]
