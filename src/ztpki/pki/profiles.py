"""Certificate profiles: which extensions a certificate gets for its role (RFC 5280)."""

from __future__ import annotations

import ipaddress
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from ztpki.errors import UnsupportedParameter
from ztpki.pki.keys import PublicKey

# RFC 9336 id-kp-documentSigning: the manifest signer signs documents (a shipping manifest is
# one), nothing else. The manifest-signer profile's only EKU.
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
# The EKU earlier ztpki versions added to manifest signers beside documentSigning (a UUID OID,
# ITU-T X.667, UUID 88ecf691-bf81-4caf-a053-d565b4b1f6f6). No longer issued: its 128-bit arc
# fails pkilint's decoder. Still recognised, so that customers' trust bundles and pins of
# signers made before keep working.
LEGACY_MANIFEST_SIGNING = ObjectIdentifier("2.25.182005390505476791360697117803625445110")


class CertificateProfile(StrEnum):
    """The roles a CA issues for. `device` is the default of every CA policy."""

    DEVICE = "device"  # a device's temporary or operational identity: TLS client
    SERVER = "server"  # a TLS server (customer node, CA system service)
    CLIENT = "client"  # a CA-client credential (loading station, customer node)
    MANIFEST_SIGNER = "manifest-signer"  # signs shipping manifests
    CA = "ca"  # a subordinate CA

    @classmethod
    def parse(cls, text: str) -> CertificateProfile:
        try:
            return cls(text)
        except ValueError:
            allowed = ", ".join(p.value for p in cls)
            raise UnsupportedParameter(f"unknown profile {text!r}; use one of: {allowed}") from None


def _key_usage(
    *, signature: bool, key_agreement: bool, ca: bool, commitment: bool
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature,
        content_commitment=commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def digital_signature_only() -> x509.KeyUsage:
    """digitalSignature and nothing else: a certificate that signs answers (an OCSP
    responder), never certificates, CRLs or key exchanges."""
    return _key_usage(signature=True, key_agreement=False, ca=False, commitment=False)


def _end_entity_key_usage(public_key: PublicKey, *, commitment: bool = False) -> x509.KeyUsage:
    # RSA TLS 1.2 key exchange needs keyEncipherment; EC and Ed25519 sign only.
    from cryptography.hazmat.primitives.asymmetric import rsa

    usage = _key_usage(signature=True, key_agreement=False, ca=False, commitment=commitment)
    if isinstance(public_key, rsa.RSAPublicKey) and not commitment:
        return x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=True,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
    return usage


def subject_alt_names(
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    email_addresses: tuple[str, ...] = (),
) -> x509.SubjectAlternativeName | None:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    names += [x509.RFC822Name(e) for e in email_addresses]
    return x509.SubjectAlternativeName(names) if names else None


def revocation_pointers(
    crl_url: str | None, ocsp_url: str | None
) -> list[x509.CRLDistributionPoints | x509.AuthorityInformationAccess]:
    """The CRL Distribution Point and AIA OCSP extensions for these URLs (none for None)."""
    pointers: list[x509.CRLDistributionPoints | x509.AuthorityInformationAccess] = []
    if crl_url is not None:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        pointers.append(x509.CRLDistributionPoints([point]))
    if ocsp_url is not None:
        access = x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        pointers.append(x509.AuthorityInformationAccess([access]))
    return pointers


def profile_extensions(
    profile: CertificateProfile,
    public_key: PublicKey,
    *,
    path_length: int | None = None,
) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical) pairs for a profile, apart from SKI/AKI/SAN which the CA adds."""
    if profile is CertificateProfile.CA:
        return [
            (x509.BasicConstraints(ca=True, path_length=path_length), True),
            (_key_usage(signature=True, key_agreement=False, ca=True, commitment=False), True),
        ]
    eku: list[ObjectIdentifier] = {
        CertificateProfile.DEVICE: [ExtendedKeyUsageOID.CLIENT_AUTH],
        CertificateProfile.CLIENT: [ExtendedKeyUsageOID.CLIENT_AUTH],
        CertificateProfile.SERVER: [ExtendedKeyUsageOID.SERVER_AUTH],
        CertificateProfile.MANIFEST_SIGNER: [DOCUMENT_SIGNING],
    }[profile]
    commitment = profile is CertificateProfile.MANIFEST_SIGNER
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_end_entity_key_usage(public_key, commitment=commitment), True),
        (x509.ExtendedKeyUsage(eku), False),
    ]
