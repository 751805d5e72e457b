"""The authentication module: temporary vs operational identities, and what it refuses."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from node_pki import NOW, PKI, der, leaf, sub_ca, with_namesake_factory_ca

from ztpki.errors import ConfigurationError, NotAuthenticated
from ztpki.node.authentication import AuthenticationModule, CustomerCA, FactoryTrust, IdentityKind
from ztpki.node.factory_crls import check_static_crls
from ztpki.pki.pem import fingerprint_sha256, serial_hex
from ztpki.pki.profiles import CertificateProfile


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI.create()


def test_ok_temporary_identity(pki: PKI) -> None:
    _, cert = pki.temporary("dev-1")
    identity = pki.authentication().authenticate(der(cert), now=NOW)
    assert identity.kind is IdentityKind.TEMPORARY
    assert identity.device_id == "dev-1"
    assert identity.fingerprint == fingerprint_sha256(cert)
    assert identity.serial == serial_hex(cert)
    assert identity.label is None


def test_ok_operational_identity_names_its_label(pki: PKI) -> None:
    _, cert = leaf(pki.operational, "dev-1")
    identity = pki.authentication().authenticate(der(cert), now=NOW)
    assert identity.kind is IdentityKind.OPERATIONAL and identity.label == "default"


@pytest.mark.parametrize(
    "case",
    [
        "fail-expired",
        "fail-not-yet-valid",
        "fail-server-profile",
        "fail-sibling-ca",
        "fail-unknown-ca",
        "fail-garbage",
    ],
)
def test_fail_refused(pki: PKI, case: str) -> None:
    if case == "fail-expired":
        _, cert = leaf(
            pki.factory_ca,
            "dev-1",
            not_before=NOW - timedelta(hours=20),
            validity=timedelta(hours=1),
        )
    elif case == "fail-not-yet-valid":
        _, cert = leaf(pki.factory_ca, "dev-1", not_before=NOW + timedelta(days=1))
    elif case == "fail-server-profile":
        _, cert = leaf(pki.factory_ca, "dev-1", profile=CertificateProfile.SERVER)
    elif case == "fail-sibling-ca":
        _, cert = leaf(pki.sibling, "dev-1")
    elif case == "fail-unknown-ca":
        other = sub_ca(PKI.create().factory_root, "factory CA")  # same name, other key
        _, cert = leaf(other, "dev-1")
    else:
        with pytest.raises(NotAuthenticated, match="not valid DER"):
            pki.authentication().authenticate(b"\x30\x03garbage", now=NOW)
        return
    with pytest.raises(NotAuthenticated):
        pki.authentication().authenticate(der(cert), now=NOW)


def test_ok_revoked_temporary_certificate_is_an_identity_with_its_issuer(pki: PKI) -> None:
    # A revoked certificate of a genuine factory CA authenticates: refusing it is
    # authorization's decision, audited (test_node_factory_crls).
    _, revoked = pki.temporary("dev-r")
    identity = pki.authentication().authenticate(der(revoked), now=NOW)
    assert identity.device_id == "dev-r"
    assert identity.issuer == pki.factory_ca.certificate


def test_fail_crl_from_an_untrusted_signer(pki: PKI) -> None:
    stranger = PKI.create().factory_ca
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.factory_ca.certificate.subject)
        .last_update(NOW)
        .next_update(NOW + timedelta(days=1))
        .sign(stranger.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigurationError):
        check_static_crls([crl], pki.bundle())
    check_static_crls([pki.revoking_crl()], pki.bundle())  # negative control


def test_ok_several_manufacturers(pki: PKI) -> None:
    other = PKI.create()
    module = AuthenticationModule(
        FactoryTrust.from_bundles([pki.bundle(), other.bundle()]),
        [CustomerCA("default", pki.operational.chain)],
    )
    for maker in (pki, other):
        _, cert = maker.temporary("dev-x")
        assert module.authenticate(der(cert), now=NOW).kind is IdentityKind.TEMPORARY


def test_ok_bundle_without_root_is_an_anchor(pki: PKI) -> None:
    trust = FactoryTrust.from_bundles([[pki.factory_ca.certificate]])
    assert trust.partial_chain and trust.anchors == (pki.factory_ca.certificate,)
    module = AuthenticationModule(trust, [CustomerCA("default", pki.operational.chain)])
    _, cert = pki.temporary("dev-1")
    assert module.authenticate(der(cert), now=NOW).device_id == "dev-1"
    assert module.partial_chain


def test_ok_tls_store_holds_every_certificate_once(pki: PKI) -> None:
    store = pki.authentication().tls_trust_store()
    assert len(store) == len({c.fingerprint(hashes.SHA256()) for c in store}) == 4


def test_ok_factory_ca_with_the_same_name_as_a_customer_ca(pki: PKI) -> None:
    """Names are not identities: a factory CA called like the customer's CA still works."""
    module, namesake = with_namesake_factory_ca(pki)
    _, temporary = leaf(namesake, "dev-1")
    assert module.authenticate(der(temporary), now=NOW).kind is IdentityKind.TEMPORARY
    _, operational = leaf(pki.operational, "dev-1")
    assert module.authenticate(der(operational), now=NOW).kind is IdentityKind.OPERATIONAL
