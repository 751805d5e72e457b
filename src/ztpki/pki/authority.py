"""A certification authority in memory: its key, its certificate, and how it signs.

The CA is loaded once and reused for every issuance: issuer name, authority key identifier
and digest are derived at construction, never per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from ztpki.errors import UnsupportedParameter
from ztpki.pki.keys import PublicKey, key_spec_of
from ztpki.pki.profiles import (
    CertificateProfile,
    profile_extensions,
    revocation_pointers,
    subject_alt_names,
)
from ztpki.pki.signer import SigningKey, sign_certificate

# Backdate notBefore a little so devices with slightly slow clocks accept a fresh certificate.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class IssuanceGrant:
    """What authorization decided a certificate may contain; the CA applies it verbatim."""

    subject: x509.Name
    profile: CertificateProfile
    not_before: datetime
    not_after: datetime
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    # RFC 5280 4.1.2.6: e-mail addresses SHOULD be rfc822Name subjectAltNames.
    email_addresses: tuple[str, ...] = ()
    path_length: int | None = None
    # For a CA certificate: the names it may certify (RFC 5280 4.2.1.10).
    name_constraints: x509.NameConstraints | None = None
    # Where relying parties check revocation (RFC 5280 4.2.1.13, 4.2.2.1); None: not named.
    crl_url: str | None = None
    ocsp_url: str | None = None


def certificate_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """What every certificate ztpki signs starts with: the names, the key, a random serial,
    the validity and the subject key identifier."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_self_signed_ca(
    key: SigningKey, subject: x509.Name, *, now: datetime, validity: timedelta
) -> x509.Certificate:
    """A root CA certificate (self-issued, self-signed, CA:TRUE, keyCertSign + cRLSign)."""
    public_key = key.public_key()
    builder = certificate_builder(subject, subject, public_key, now - CLOCK_SKEW, now + validity)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    )
    for extension, critical in profile_extensions(CertificateProfile.CA, public_key):
        builder = builder.add_extension(extension, critical=critical)
    return sign_certificate(builder, key)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA ready to sign: key (a file's or a token's), certificate, and the chain above it
    up to the root."""

    name: str
    key: SigningKey = field(repr=False)
    certificate: x509.Certificate
    parents: tuple[x509.Certificate, ...] = ()
    _aki: x509.AuthorityKeyIdentifier = field(init=False, repr=False)
    _constant: dict[tuple[object, ...], list[x509.Extension[x509.ExtensionType]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
        object.__setattr__(self, "_aki", aki)
        object.__setattr__(self, "_constant", {})

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """This CA's certificate and every parent up to and including the root."""
        return (self.certificate, *self.parents)

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1]

    def clamp_validity(
        self, not_before: datetime, not_after: datetime
    ) -> tuple[datetime, datetime]:
        """Keep a validity inside this CA's own (RFC 5280: never outlive the issuer)."""
        ca_before = self.certificate.not_valid_before_utc
        ca_after = self.certificate.not_valid_after_utc
        start = max(not_before, ca_before)
        end = min(not_after, ca_after)
        if end <= start:
            raise UnsupportedParameter(
                f"CA {self.name} is not valid in the requested period; renew the CA certificate"
            )
        return start, end

    def _constant_extensions(
        self, profile: CertificateProfile, public_key: PublicKey, path_length: int | None
    ) -> list[x509.Extension[x509.ExtensionType]]:
        """AKI and the profile's extensions, DER-encoded once per profile and key type.

        Handing the signer ready bytes (an UnrecognizedExtension with a known OID encodes to
        the same DER) saves it re-reading every field of every extension on each issuance.
        """
        cache_key = (profile, key_spec_of(public_key), path_length)
        extensions = self._constant.get(cache_key)
        if extensions is None:
            pairs: list[tuple[x509.ExtensionType, bool]] = [(self._aki, False)]
            pairs += profile_extensions(profile, public_key, path_length=path_length)
            extensions = [
                x509.Extension(
                    value.oid, critical, x509.UnrecognizedExtension(value.oid, value.public_bytes())
                )
                for value, critical in pairs
            ]
            self._constant[cache_key] = extensions
        return extensions

    def issue(self, public_key: PublicKey, grant: IssuanceGrant) -> x509.Certificate:
        """Sign a certificate for public_key exactly as the grant says."""
        not_before, not_after = self.clamp_validity(grant.not_before, grant.not_after)
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        extensions: list[x509.Extension[x509.ExtensionType]] = [
            x509.Extension(ski.oid, False, ski),
            *self._constant_extensions(grant.profile, public_key, grant.path_length),
        ]
        san = subject_alt_names(grant.dns_names, grant.ip_addresses, grant.email_addresses)
        if san is not None:
            # RFC 5280 4.2.1.6: critical only when the subject is empty; ours never is.
            extensions.append(x509.Extension(san.oid, False, san))
        for pointer in revocation_pointers(grant.crl_url, grant.ocsp_url):
            extensions.append(x509.Extension(pointer.oid, False, pointer))
        if grant.name_constraints is not None:
            # RFC 5280 4.2.1.10: conforming CAs MUST mark this extension critical.
            nc = grant.name_constraints
            extensions.append(x509.Extension(nc.oid, True, nc))
        builder = (
            x509.CertificateBuilder(extensions=extensions)
            .subject_name(grant.subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )
        return sign_certificate(builder, self.key)
