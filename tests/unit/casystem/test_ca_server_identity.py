"""The CA-system service's TLS server certificate is renewed on its live SSLContext well before
it expires: new handshakes get the new certificate, and the schedule runs on an injected clock
and sleep (no test waits for it)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ztpki.casystem.directory import CASystemDirectory, init_ca, service_authority
from ztpki.casystem.operations import add_client, build_service
from ztpki.casystem.server_identity import (
    RENEW_BEFORE,
    SERVER_CERT_LIFETIME,
    ServerIdentity,
    keep_renewed,
)
from ztpki.credentials import Credential, client_context
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.profiles import CertificateProfile
from ztpki.store.records import ClientEntitlement

NOW = datetime.now(UTC).replace(microsecond=0)
SECRET = b"server-identity-passphrase"


def _service_ca(*, created: datetime) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    name = build_subject("test service CA", SubjectFields(), serial_number=None)
    cert = create_self_signed_ca(key, name, now=created, validity=timedelta(days=3650))
    return CertificateAuthority(name="service", key=key, certificate=cert)


def _client(ca: CertificateAuthority) -> ssl.SSLContext:
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject("line1", SubjectFields(), serial_number=None),
        profile=CertificateProfile.CLIENT,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=100),
    )
    cert = ca.issue(key.public_key(), grant)
    return client_context(key=key, chain=[cert], server_anchors=[ca.certificate])


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> x509.Certificate:
    """One verified mutual-TLS handshake over memory; the certificate the server presented."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), done
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_ok_renewal_is_due_only_in_the_last_part_of_the_lifetime() -> None:
    identity = ServerIdentity(_service_ca(created=NOW), ("localhost",), now=NOW)
    not_after = identity.certificate.not_valid_after_utc
    assert not_after == NOW + SERVER_CERT_LIFETIME
    # Renewed with most of the lifetime left: days of retries before clients would refuse.
    assert RENEW_BEFORE >= SERVER_CERT_LIFETIME / 2
    assert not identity.due(NOW)
    assert not identity.due(not_after - RENEW_BEFORE - timedelta(seconds=1))
    assert identity.due(not_after - RENEW_BEFORE)
    assert identity.due(not_after + timedelta(days=1))


def test_ok_new_handshakes_get_the_renewed_certificate() -> None:
    # The service has run for 12 days: its certificate has 18 left, inside RENEW_BEFORE.
    started = NOW - timedelta(days=12)
    ca = _service_ca(created=started - timedelta(days=1))
    identity = ServerIdentity(ca, ("localhost", "127.0.0.1"), now=started)
    client = _client(ca)
    old = handshake(identity.context, client)
    assert old == identity.certificate
    assert not identity.renew_if_due(started + timedelta(days=1))  # control: not yet due

    assert identity.renew_if_due(NOW)
    new = handshake(identity.context, client)
    assert new == identity.certificate != old
    assert new.not_valid_after_utc == NOW + SERVER_CERT_LIFETIME > old.not_valid_after_utc
    assert new.public_key() != old.public_key()  # a fresh key, not only a fresh signature
    assert new.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ) == old.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not identity.renew_if_due(NOW)  # control: done until the next window


def _fake_sleep(stop_after: int) -> tuple[list[float], Callable[[float], object]]:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        if len(delays) == stop_after:
            raise asyncio.CancelledError
        delays.append(seconds)

    return delays, sleep


def test_ok_keep_renewed_checks_on_schedule_without_sleeping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity = ServerIdentity(_service_ca(created=NOW), ("localhost",), now=NOW)
    real_renew = identity.renew
    renewed: list[datetime] = []

    def spy(now: datetime) -> x509.Certificate:
        renewed.append(now)
        return real_renew(now)

    monkeypatch.setattr(identity, "renew", spy)
    # Each check moves the clock by 5 days. A 30-day certificate is renewed with 20 days left,
    # so every 10 days: days 10, 20 and 30 renew, days 5, 15 and 25 are early.
    times = iter(NOW + timedelta(days=5 * n) for n in range(1, 7))
    delays, sleep = _fake_sleep(stop_after=6)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(
            keep_renewed(identity, clock=lambda: next(times), check_every=60.0, sleep=sleep)  # type: ignore[arg-type]
        )
    assert delays == [60.0] * 6
    assert renewed == [NOW + timedelta(days=10), NOW + timedelta(days=20), NOW + timedelta(days=30)]
    assert (
        identity.certificate.not_valid_after_utc == NOW + timedelta(days=30) + SERVER_CERT_LIFETIME
    )


def test_ok_failed_renewal_keeps_the_certificate_and_retries(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    identity = ServerIdentity(_service_ca(created=NOW), ("localhost",), now=NOW)
    first = identity.certificate
    real_renew = identity.renew
    calls: list[datetime] = []

    def flaky(now: datetime) -> x509.Certificate:
        calls.append(now)
        if len(calls) == 1:
            raise ssl.SSLError("simulated failure")
        return real_renew(now)

    monkeypatch.setattr(identity, "renew", flaky)
    late = NOW + SERVER_CERT_LIFETIME - timedelta(days=1)
    _, sleep = _fake_sleep(stop_after=2)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(keep_renewed(identity, clock=lambda: late, check_every=1.0, sleep=sleep))  # type: ignore[arg-type]
    assert len(calls) == 2 and identity.certificate != first
    assert "renewing the TLS server certificate failed" in caplog.text


def test_ok_service_renews_on_its_listening_socket(tmp_path: Path) -> None:
    directory = CASystemDirectory(tmp_path / "plant")
    init_ca(
        directory, "root", key_spec=KeySpec.EC_P256, validity_days=30, passphrase=SECRET, now=NOW
    )
    add_client(
        directory,
        "line1",
        out=tmp_path / "line1",
        passphrase=SECRET,
        client_passphrase=None,
        entitlement=ClientEntitlement(cas=("root",)),
    )
    credential = Credential.load(tmp_path / "line1", passphrase=None)
    anchor = service_authority(directory, passphrase=SECRET, now=NOW).certificate
    client = client_context(key=credential.key, chain=credential.chain, server_anchors=[anchor])
    service = build_service(directory, passphrase=SECRET, hostnames=("127.0.0.1",))

    async def presented(port: int) -> x509.Certificate:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der)

    async def scenario() -> tuple[x509.Certificate, x509.Certificate, bool]:
        _, port = await service.start("127.0.0.1", 0)
        try:
            assert service.renewal is not None and not service.renewal.done()
            before = await presented(port)
            assert service.identity is not None
            service.identity.renew(datetime.now(UTC) + timedelta(seconds=2))
            after = await presented(port)
        finally:
            await service.close()
        return before, after, service.renewal.cancelled()

    before, after, stopped = asyncio.run(scenario())
    assert after != before and after.not_valid_after_utc > before.not_valid_after_utc
    assert stopped  # the schedule ends with the service
