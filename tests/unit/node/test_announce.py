"""What `node serve --announce` announces, and what it refuses before serving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from ztpki.errors import ConfigurationError
from ztpki.node.announce import announcement_for
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import fingerprint_sha256
from ztpki.pki.profiles import CertificateProfile

NOW = datetime.now(UTC)


def chain(*dns: str) -> list[x509.Certificate]:
    subject = build_subject("Node CA", SubjectFields(), serial_number=None)
    key = generate_private_key(KeySpec.EC_P256)
    ca = CertificateAuthority(
        "ca", key, create_self_signed_ca(key, subject, now=NOW, validity=timedelta(days=9))
    )
    leaf_key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject("node", SubjectFields(), serial_number=None),
        profile=CertificateProfile.SERVER,
        not_before=NOW - timedelta(minutes=1),
        not_after=NOW + timedelta(days=1),
        dns_names=dns,
        ip_addresses=("127.0.0.1",),
    )
    return [ca.issue(leaf_key.public_key(), grant), ca.certificate]


def test_ok_first_dns_name_listen_address_and_top_ca_hint() -> None:
    certs = chain("node.site.example", "other.site.example")
    a = announcement_for(certs, listen_host="127.0.0.1", port=8443, priority=3)
    assert (a.host, a.addresses, a.port, a.priority) == (
        "node.site.example",
        ("127.0.0.1",),
        8443,
        3,
    )
    assert a.ca_fingerprint == fingerprint_sha256(certs[-1])
    assert a.service_type == "_ztpki-est._tcp.local."
    assert a.instance == "ztpki node node-site-example 8443._ztpki-est._tcp.local."


def test_ok_leaf_alone_announces_no_hint() -> None:
    a = announcement_for(chain("node.site.example")[:1], listen_host="127.0.0.1", port=1)
    assert a.ca_fingerprint is None


def test_ok_announce_host_among_the_certificate_names() -> None:
    certs = chain("node.site.example", "other.site.example")
    a = announcement_for(certs, listen_host="127.0.0.1", port=1, host="OTHER.site.example")
    assert a.host == "OTHER.site.example"


def test_fail_certificate_without_dns_name() -> None:
    with pytest.raises(ConfigurationError, match="--dns NAME"):
        announcement_for(chain(), listen_host="127.0.0.1", port=1)


def test_fail_announce_host_the_certificate_does_not_name() -> None:
    with pytest.raises(ConfigurationError, match="devices would refuse the node"):
        announcement_for(
            chain("node.site.example"), listen_host="127.0.0.1", port=1, host="evil.example"
        )
