"""Text a client chose, quoted where it enters a message: the authentication module's refusal
of a certificate with a hostile subject, the authorization module's subject mismatch, the EST
codec's header errors and the XML codec's value errors. Each message must be one line of
printable ASCII that still shows the hostile text (escaped)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from node_pki import NOW, PKI
from test_node_authorization import TEMP, ctx, row

from ztpki.errors import MalformedInput, NotAuthenticated, ZtpkiError
from ztpki.node.authorization import Refused, decide
from ztpki.pki.authority import IssuanceGrant
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import certificate_der
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.enrollment import EnrollmentRequest
from ztpki.protocol.est import check_content_type
from ztpki.store.records import DeviceState

HOSTILE = "A\n2020-01-01 INFO ztpki.node: issued \x1b]0;pwned\x07\u2028[/bold]"


def _one_printable_line(message: str) -> None:
    assert message.isascii() and message.isprintable(), repr(message)
    assert "\\n2020-01-01 INFO" in message and "\\x1b]0" in message, message


def test_fail_expired_certificate_with_a_hostile_subject() -> None:
    pki = PKI.create()
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTILE[:64])]),
        profile=CertificateProfile.DEVICE,
        not_before=NOW - timedelta(hours=10),
        not_after=NOW - timedelta(hours=9),
    )
    cert = pki.factory_ca.issue(key.public_key(), grant)
    with pytest.raises(NotAuthenticated) as refused:
        pki.authentication().authenticate(certificate_der(cert), now=NOW)
    # cryptography's verifier names the certificate it refused, subject and all.
    _one_printable_line(refused.value.message)


def test_fail_csr_naming_a_hostile_device() -> None:
    with pytest.raises(Refused) as refused:
        decide(row(DeviceState.LISTED), TEMP, ctx(csr_device_id=HOSTILE))
    _one_printable_line(refused.value.message)
    assert "\\u2028[/bold]'" in refused.value.message


def test_fail_hostile_content_type() -> None:
    with pytest.raises(ZtpkiError) as refused:
        check_content_type(HOSTILE, "application/pkcs10")
    _one_printable_line(refused.value.message)


def test_fail_hostile_xml_value() -> None:
    with pytest.raises(MalformedInput) as refused:
        EnrollmentRequest(request_id="r-1", device_id="ACME\u2028\u202eevil")
    message = refused.value.message
    assert message.isascii() and "'ACME\\u2028\\u202eevil'" in message, message
