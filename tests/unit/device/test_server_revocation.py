"""The device checks the revocation of the server it connects to (device.server_revocation).

Real TLS on loopback (tests.e2e.device_fixtures.tls_service), with a plain-HTTP server
standing in for the customer CA's CRL publisher and OCSP responder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from tests.e2e.device_fixtures import tls_service
from tests.support.http_files import HTTPFiles, serving_http
from tests.unit.device.fake_node import Pki

from ztpki.device import DeviceMemory, connect, identity_ssl_context
from ztpki.device.connect import RevocationPolicy, ServerRefused
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.profiles import CertificateProfile
from ztpki.revocation_source import CRLCache


def now() -> datetime:
    return datetime.now(UTC)


def server_certificate(
    ca: CertificateAuthority, *, crl_url: str | None = None, ocsp_url: str | None = None
) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject("service", SubjectFields(), serial_number=None),
        profile=CertificateProfile.SERVER,
        not_before=now() - timedelta(minutes=5),
        not_after=now() + timedelta(days=1),
        ip_addresses=("127.0.0.1",),
        crl_url=crl_url,
        ocsp_url=ocsp_url,
    )
    return key, ca.issue(key.public_key(), grant)


def crl_der(ca: CertificateAuthority, *revoked: x509.Certificate) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now() - timedelta(minutes=1))
        .next_update(now() + timedelta(hours=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now() - timedelta(minutes=1))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def pki() -> Pki:
    return Pki()


@pytest.fixture
def device(pki: Pki, tmp_path: Path) -> DeviceMemory:
    return pki.manufacture(tmp_path / "dev", "ACME-0001")


@pytest.fixture
def publisher() -> Iterator[HTTPFiles]:
    with serving_http() as files:
        yield files


def fresh(require: bool = False) -> RevocationPolicy:
    return RevocationPolicy(require=require, timeout=2, cache=CRLCache())


def get(
    pki: Pki,
    device: DeviceMemory,
    key: PrivateKey,
    cert: x509.Certificate,
    policy: RevocationPolicy | None,
) -> int:
    anchors = [pki.customer.certificate, pki.customer_root.certificate]
    chain = [cert, pki.customer.certificate]
    with tls_service(key, chain, [pki.factory.certificate]) as url:
        context = identity_ssl_context(device, server_anchors=anchors, revocation=policy)
        return connect(url, context, timeout=10).status


def test_ok_server_on_a_current_crl_is_trusted(
    pki: Pki, device: DeviceMemory, publisher: HTTPFiles
) -> None:
    key, cert = server_certificate(pki.customer, crl_url=f"{publisher.url}/crl/customer.crl")
    publisher.routes["/crl/customer.crl"] = crl_der(pki.customer)
    assert get(pki, device, key, cert, fresh(require=True)) == 200
    assert publisher.asked == ["/crl/customer.crl"]


@pytest.mark.parametrize("require", [False, True], ids=["soft-fail", "hard-fail"])
def test_fail_revoked_server_is_always_refused(
    pki: Pki, device: DeviceMemory, publisher: HTTPFiles, require: bool
) -> None:
    key, cert = server_certificate(pki.customer, crl_url=f"{publisher.url}/crl/customer.crl")
    publisher.routes["/crl/customer.crl"] = crl_der(pki.customer, cert)
    with pytest.raises(ServerRefused, match=r"revoked by its CA.*keyCompromise"):
        get(pki, device, key, cert, fresh(require=require))
    # Negative control: without a revocation check, the same server is reached.
    assert get(pki, device, key, cert, None) == 200


def test_unreachable_crl_soft_fails_and_hard_fails_on_request(
    pki: Pki, device: DeviceMemory, publisher: HTTPFiles, caplog: pytest.LogCaptureFixture
) -> None:
    key, cert = server_certificate(pki.customer, crl_url=f"{publisher.url}/crl/absent.crl")
    with caplog.at_level(logging.WARNING):
        assert get(pki, device, key, cert, fresh()) == 200
    assert "could not be checked" in caplog.text and "soft-fail" in caplog.text
    with pytest.raises(ServerRefused, match="could not be checked"):
        get(pki, device, key, cert, fresh(require=True))


def test_ok_certificate_naming_no_crl_or_ocsp_is_not_checked(
    pki: Pki, device: DeviceMemory, publisher: HTTPFiles
) -> None:
    key, cert = server_certificate(pki.customer)
    assert get(pki, device, key, cert, fresh(require=True)) == 200
    assert publisher.asked == []


def ocsp_answer(ca: CertificateAuthority, status: ocsp.OCSPCertStatus) -> Callable[[bytes], bytes]:
    def answer(body: bytes) -> bytes:
        request = ocsp.load_der_ocsp_request(body)
        revoked = status is ocsp.OCSPCertStatus.REVOKED
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=request.issuer_name_hash,
                issuer_key_hash=request.issuer_key_hash,
                serial_number=request.serial_number,
                algorithm=request.hash_algorithm,
                cert_status=status,
                this_update=now() - timedelta(minutes=1),
                next_update=now() + timedelta(hours=1),
                revocation_time=now() - timedelta(minutes=2) if revoked else None,
                revocation_reason=x509.ReasonFlags.superseded if revoked else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, ca.certificate)
        )
        response = builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
        return response.public_bytes(serialization.Encoding.DER)

    return answer


def test_fail_server_revoked_by_ocsp_is_refused(
    pki: Pki, device: DeviceMemory, publisher: HTTPFiles
) -> None:
    key, cert = server_certificate(pki.customer, ocsp_url=f"{publisher.url}/ocsp")
    publisher.routes["/ocsp"] = ocsp_answer(pki.customer, ocsp.OCSPCertStatus.REVOKED)
    with pytest.raises(ServerRefused, match="superseded"):
        get(pki, device, key, cert, fresh())
    publisher.routes["/ocsp"] = ocsp_answer(pki.customer, ocsp.OCSPCertStatus.GOOD)
    assert get(pki, device, key, cert, fresh(require=True)) == 200
