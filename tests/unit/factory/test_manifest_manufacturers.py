"""Manifest verification per manufacturer: whose name, whose signer, whose device ids."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from factory_pki import NOW, FactoryPKI, factory_pki, leaf, name
from tests.support.signers import EARLIER_ZTPKI_SIGNER, document_signer

from ztpki.errors import VerificationFailed
from ztpki.pki.device_ids import DeviceIdNamespace
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import fingerprint_sha256
from ztpki.pki.profiles import DOCUMENT_SIGNING, LEGACY_MANIFEST_SIGNING, CertificateProfile
from ztpki.protocol.manifest import (
    Manifest,
    ManifestEntry,
    ManufacturerTrust,
    new_manifest_id,
    sign_manifest,
    verify_manifest,
)

ACME: FactoryPKI = factory_pki()
GLOBEX: FactoryPKI = factory_pki()


def trust(pki: FactoryPKI, maker: str, pattern: str, *pins: str) -> ManufacturerTrust:
    return ManufacturerTrust(
        maker,
        (pki.factory.certificate, pki.root.certificate),
        DeviceIdNamespace.parse([pattern]),
        frozenset(pins),
    )


TRUSTS = [trust(ACME, "Acme", "ACME-*"), trust(GLOBEX, "Globex", "GLX-*")]


def manifest(maker: str, *ids: str) -> Manifest:
    entries = tuple(ManifestEntry(i, f"{n:064x}", None, None, NOW) for n, i in enumerate(ids))
    return Manifest(new_manifest_id(), maker, None, None, NOW, entries)


def signed_by(pki: FactoryPKI, m: Manifest) -> bytes:
    key, chain = leaf(pki.manifests, "signer", CertificateProfile.MANIFEST_SIGNER)
    return sign_manifest(m, key=key, chain=chain[:-1])


def test_ok_each_manufacturer_lists_its_own() -> None:
    for pki, maker, device in ((ACME, "Acme", "ACME-1"), (GLOBEX, "Globex", "GLX-1")):
        m = manifest(maker, device)
        verified = verify_manifest(signed_by(pki, m), manufacturers=TRUSTS, now=NOW)
        assert verified.manifest == m
        # The manifest-signer profile's EKU is the standard one alone (pkilint decodes it).
        usage = verified.signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [DOCUMENT_SIGNING]


@pytest.mark.parametrize(
    ("pki", "m", "message"),
    [
        pytest.param(
            GLOBEX,
            manifest("Globex", "GLX-1", "ACME-7"),
            re.escape(
                "1 device id(s) outside manufacturer Globex's namespace (GLX-*), e.g. ACME-7"
            ),
            id="fail-ids-outside-namespace",
        ),
        pytest.param(
            GLOBEX,
            manifest("Acme", "ACME-7"),
            "signer certificate does not verify.*trust bundle of manufacturer Acme",
            id="fail-named-manufacturer-signed-by-another",
        ),
        pytest.param(
            ACME,
            manifest("Initech", "ACME-7"),
            "names manufacturer 'Initech', which is not a configured manufacturer",
            id="fail-unknown-manufacturer",
        ),
    ],
)
def test_fail_manifest_outside_the_manufacturers_rights(
    pki: FactoryPKI, m: Manifest, message: str
) -> None:
    with pytest.raises(VerificationFailed, match=message):
        verify_manifest(signed_by(pki, m), manufacturers=TRUSTS, now=NOW)


def _other_signer(
    pki: FactoryPKI, eku: tuple[x509.ObjectIdentifier, ...] = (DOCUMENT_SIGNING,)
) -> tuple[bytes, str]:
    """A manifest signed by a certificate the manufacturer's manifest CA made outside the
    manifest-signer profile, with these EKUs."""
    key = generate_private_key(KeySpec.EC_P256)
    cert = document_signer(
        pki.manifests,
        key,
        name("invoice signer"),
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=30),
        eku=eku,
    )
    data = sign_manifest(manifest("Acme", "ACME-1"), key=key, chain=[cert, *pki.manifests.chain])
    return data, fingerprint_sha256(cert)


@pytest.mark.parametrize(
    "eku",
    [
        pytest.param(EARLIER_ZTPKI_SIGNER, id="ok-earlier-ztpki-signer"),
        pytest.param((LEGACY_MANIFEST_SIGNING,), id="ok-earlier-mark-alone"),
        pytest.param((DOCUMENT_SIGNING,), id="ok-document-signing"),
    ],
)
def test_ok_signer_with_document_signing_or_the_earlier_mark(
    eku: tuple[x509.ObjectIdentifier, ...],
) -> None:
    # Unpinned, the bundle is the entitlement: any documentSigning certificate under it, and
    # the signers earlier ztpki versions made (customers have them in their trust bundles).
    data, fingerprint = _other_signer(ACME, eku)
    assert verify_manifest(data, manufacturers=TRUSTS, now=NOW).manifest.device_ids() == ("ACME-1",)
    pinned = [trust(ACME, "Acme", "ACME-*", fingerprint)]
    assert verify_manifest(data, manufacturers=pinned, now=NOW).signer.fingerprint


def test_fail_signer_with_neither_eku_even_when_pinned() -> None:
    data, fingerprint = _other_signer(ACME, (ExtendedKeyUsageOID.CODE_SIGNING,))
    for trusts in (TRUSTS, [trust(ACME, "Acme", "ACME-*", fingerprint)]):
        with pytest.raises(VerificationFailed, match=r"not a document \(manifest\) signing"):
            verify_manifest(data, manufacturers=trusts, now=NOW)


def test_fail_document_signer_not_pinned_when_the_manufacturer_pins() -> None:
    data, _ = _other_signer(ACME)
    genuine = leaf(ACME.manifests, "signer", CertificateProfile.MANIFEST_SIGNER)[1][0]
    pinned = [trust(ACME, "Acme", "ACME-*", fingerprint_sha256(genuine))]
    with pytest.raises(VerificationFailed, match="not one of the signers pinned for"):
        verify_manifest(data, manufacturers=pinned, now=NOW)


def test_fail_pins_exclude_every_other_signer() -> None:
    other = "ab" * 32
    pinned = [trust(ACME, "Acme", "ACME-*", other)]
    data = signed_by(ACME, manifest("Acme", "ACME-1"))  # marked, but not the pinned one
    with pytest.raises(VerificationFailed, match="not one of the signers pinned for"):
        verify_manifest(data, manufacturers=pinned, now=NOW)


def test_fail_bad_pin() -> None:
    with pytest.raises(ValueError, match="64 lower-case hex"):
        trust(ACME, "Acme", "ACME-*", "sha256:" + "ab" * 32)
