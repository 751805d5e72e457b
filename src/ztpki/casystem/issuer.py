"""The CA system's generating and signing means (patent Fig. 4: 85, 87), free of I/O.

An enrollment request becomes an IssuancePlan (which CA, which grant, which key), the plan
plus a public key becomes a certificate, and the certificate plus the key becomes the answer.
The service decides where each step runs (inline, in a process pool, in the writer thread).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ztpki.casystem.entitlement import authorize
from ztpki.casystem.policy import IssuingPolicy
from ztpki.errors import MalformedInput, NotAuthorized, UnknownCA, UnsupportedParameter
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant
from ztpki.pki.keys import KeySpec, PrivateKey, PublicKey, encode_pkcs8, key_spec_of
from ztpki.pki.names import SubjectFields
from ztpki.pki.pem import certificate_der, serial_hex
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentParameters, EnrollmentRequest
from ztpki.store.records import (
    AlreadyIssued,
    AnsweredRequest,
    CertificateStatus,
    ClientEntitlement,
    IssuedCertificate,
)
from ztpki.untrusted import quote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCA:
    authority: CertificateAuthority
    policy: IssuingPolicy
    chain_der: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class IssuancePlan:
    """What will be issued for one request, decided before any key or signature work."""

    request: EnrollmentRequest
    ca: LoadedCA
    grant: IssuanceGrant
    key_spec: KeySpec
    csr_public_key: PublicKey | None = None
    client: str | None = None  # the CA-client that asked, recorded with the certificate


def _csr_public_key(csr_der: bytes, policy: IssuingPolicy) -> tuple[PublicKey, KeySpec]:
    if not policy.allow_csr:
        raise UnsupportedParameter("this CA does not accept CSRs; omit CSR to get a generated key")
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except (ValueError, x509.InvalidVersion):
        raise MalformedInput("CSR is not a DER PKCS#10 certification request") from None
    try:
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType):
        raise MalformedInput("CSR public key or signature algorithm is not supported") from None
    if not valid:
        raise MalformedInput("CSR signature does not verify: the CSR was altered or mis-signed")
    if not isinstance(
        public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    ):
        raise UnsupportedParameter("CSR key type is not supported; use EC, RSA or Ed25519")
    return public_key, policy.key_spec(key_spec_of(public_key))


def _proven_public_key(spki_der: bytes, policy: IssuingPolicy) -> tuple[PublicKey, KeySpec]:
    """A device-made key whose possession the CA-client verified (CMP POPO): allowed where a
    CSR is, since both certify a key the device chose."""
    if not policy.allow_csr:
        raise UnsupportedParameter(
            "this CA does not certify device-made keys; omit PublicKey to get a generated key"
        )
    try:
        public_key = serialization.load_der_public_key(spki_der)
    except (ValueError, UnsupportedAlgorithm):
        raise MalformedInput("PublicKey is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(
        public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    ):
        raise UnsupportedParameter("PublicKey type is not supported; use EC, RSA or Ed25519")
    return public_key, policy.key_spec(key_spec_of(public_key))


_PARAMETER_NAMES = tuple(f.name for f in fields(EnrollmentParameters))


def request_digest(request: EnrollmentRequest) -> str:
    """SHA-256 (hex) of everything a request asks for, its id excepted: a request sent again
    has the same digest, another request under a reused id a different one. The one-time
    passphrase is part of it: only its holder gets the kept (encrypted) key back."""
    params = request.parameters
    parts = (
        request.device_id,
        request.ca,
        request.reissue,
        request.csr_der,
        *(getattr(params, name) for name in _PARAMETER_NAMES),
        # Only when present, so the digest of every other request stays what it was.
        *(() if request.public_key_der is None else (request.public_key_der,)),
    )
    # repr of a tuple of str, bytes, bool, int, None, enums and tuples of them is exact
    # (quotes escaped, every part delimited) and the same in every process of a release.
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class CASystem:
    """The loaded CAs of one CA system, ready to plan and sign."""

    def __init__(self, cas: Mapping[str, LoadedCA], *, default_ca: str) -> None:
        if default_ca not in cas:
            raise UnknownCA(f"default CA {default_ca!r} is not loaded")
        self.cas = dict(cas)
        self.default_ca = default_ca

    def resolve(self, name: str | None) -> LoadedCA:
        ca = self.cas.get(name or self.default_ca)
        if ca is None:
            # Never lists the CAs that exist: a client learns only what it may use.
            raise UnknownCA(f"this CA system serves no CA named {quote(name or '')}")
        return ca

    def plan(
        self,
        request: EnrollmentRequest,
        *,
        now: datetime,
        client: str,
        entitlement: ClientEntitlement,
    ) -> IssuancePlan:
        """Check the client's entitlement, resolve the CA and apply its policy, or raise a
        typed error. Cheap: no crypto."""
        params = request.parameters
        authorize(
            client,
            entitlement,
            ca_name=request.ca or self.default_ca,
            device_id=request.device_id,
            dns_names=params.dns_names,
            ip_addresses=params.ip_addresses,
        )
        ca = self.resolve(request.ca)
        fields = SubjectFields(
            organization=params.organization,
            organizational_unit=params.organizational_unit,
            locality=params.locality,
            country=params.country,
            email=params.email,
        )
        grant = ca.policy.grant(
            request.device_id,
            fields,
            validity_days=params.validity_days,
            dns_names=params.dns_names,
            ip_addresses=params.ip_addresses,
            now=now,
        )
        ca_not_after = ca.authority.certificate.not_valid_after_utc
        if params.validity_days is not None and grant.not_after > ca_not_after:
            # The CA would have to cut the requested validity short: refuse, never change it.
            raise UnsupportedParameter(
                f"validity of {params.validity_days} days outlives CA {ca.authority.name}, "
                f"which expires {ca_not_after:%Y-%m-%d}; ask for fewer days or omit ValidityDays"
            )
        if request.csr_der is not None:
            if params.key_algorithm is not None:
                raise UnsupportedParameter("KeyAlgorithm cannot be combined with a CSR")
            public_key, spec = _csr_public_key(request.csr_der, ca.policy)
            return IssuancePlan(request, ca, grant, spec, csr_public_key=public_key, client=client)
        if request.public_key_der is not None:
            if params.key_algorithm is not None:
                raise UnsupportedParameter("KeyAlgorithm cannot be combined with a PublicKey")
            public_key, spec = _proven_public_key(request.public_key_der, ca.policy)
            return IssuancePlan(request, ca, grant, spec, csr_public_key=public_key, client=client)
        spec = ca.policy.key_spec(params.key_algorithm)
        return IssuancePlan(request, ca, grant, spec, client=client)

    @staticmethod
    def sign(plan: IssuancePlan, public_key: PublicKey) -> x509.Certificate:
        return plan.ca.authority.issue(public_key, plan.grant)

    @staticmethod
    def record_of(
        plan: IssuancePlan,
        certificate: x509.Certificate,
        *,
        now: datetime,
        answer_key_der: bytes | None = None,
    ) -> IssuedCertificate:
        """The issuance record, with the request it answers when a client asked (and the
        answer's key when it was encrypted for the client: never a key in the clear)."""
        der = certificate_der(certificate)
        return IssuedCertificate(
            serial=serial_hex(certificate),
            ca_name=plan.ca.authority.name,
            device_id=plan.request.device_id,
            subject=certificate.subject.rfc4514_string(),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            status=CertificateStatus.ACTIVE,
            request_id=plan.request.request_id,
            fingerprint=hashlib.sha256(der).hexdigest(),  # = fingerprint_sha256, DER once
            issued_at=now,
            certificate_der=der,
            client=plan.client,
            request_digest=None if plan.client is None else request_digest(plan.request),
            answer_key_der=answer_key_der if plan.client is not None else None,
        )

    @staticmethod
    def answer_again(plan: IssuancePlan, recorded: AnsweredRequest) -> EnrollmentAnswer:
        """The answer to a request sent again: the certificate recorded for it, and the key
        as first sent (encrypted for the requester). Refused when that certificate is no
        longer live, when the id was used for another request, or when the key it needs was
        sent in the clear and so not kept."""
        request = plan.request
        cert = recorded.certificate
        if recorded.request_digest != request_digest(request):
            raise MalformedInput(
                f"request id {quote(request.request_id)} was used for another request "
                "already; give every request its own id"
            )
        if cert.status is not CertificateStatus.ACTIVE:
            raise NotAuthorized(
                f"request {quote(request.request_id)} was answered with certificate "
                f"{cert.serial}, which is {cert.status.value} now; send a new request"
            )
        if request.csr_der is None and recorded.answer_key_der is None:
            # The key went out in the clear and was not kept: the live certificate stands.
            raise AlreadyIssued(ca_name=cert.ca_name, device_id=cert.device_id, serial=cert.serial)
        params = request.parameters
        return EnrollmentAnswer(
            request_id=request.request_id,
            certificate_der=cert.certificate_der,
            ca_certificates_der=plan.ca.chain_der if params.include_ca_certificates else (),
            private_key_der=recorded.answer_key_der,
            private_key_encrypted=recorded.answer_key_der is not None,
        )

    @staticmethod
    def answer(
        plan: IssuancePlan,
        certificate: x509.Certificate,
        private_key: PrivateKey | None,
        *,
        der: bytes | None = None,
    ) -> EnrollmentAnswer:
        """The answering means (83): key (encrypted when asked), certificate, CA chain.

        ``der`` is the certificate's DER when the caller already holds it (its record does).
        """
        params = plan.request.parameters
        key_der = None
        if private_key is not None:
            key_der = encode_pkcs8(private_key, passphrase=params.encrypt_private_key)
        chain = plan.ca.chain_der if params.include_ca_certificates else ()
        return EnrollmentAnswer(
            request_id=plan.request.request_id,
            certificate_der=der if der is not None else certificate_der(certificate),
            ca_certificates_der=chain,
            private_key_der=key_der,
            private_key_encrypted=private_key is not None
            and params.encrypt_private_key is not None,
        )
