"""A small CA that signs certificates, CRLs and OCSP responses, for the relying-party tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = datetime.now(UTC).replace(microsecond=0)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class RevocationCA:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, cn: str = "test CA", *, crl_sign: bool = True) -> RevocationCA:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=crl_sign,
            encipher_only=False,
            decipher_only=False,
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        cn: str,
        *,
        crl_urls: Sequence[str] = (),
        ocsp_urls: Sequence[str] = (),
        eku: x509.ObjectIdentifier | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(hours=1))
            .not_valid_after(NOW + timedelta(days=30))
        )
        if crl_urls:
            points = [
                x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None)
                for u in crl_urls
            ]
            builder = builder.add_extension(x509.CRLDistributionPoints(points), critical=False)
        if ocsp_urls:
            access = [
                x509.AccessDescription(
                    AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(u)
                )
                for u in ocsp_urls
            ]
            builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def crl(
        self,
        revoked: Iterable[int] = (),
        *,
        reason: x509.ReasonFlags | None = None,
        this_update: datetime | None = None,
        next_update: datetime | None = None,
        number: int = 1,
        signer: ec.EllipticCurvePrivateKey | None = None,
    ) -> x509.CertificateRevocationList:
        start = this_update or NOW - timedelta(hours=1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(start)
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        builder = builder.next_update(next_update or start + timedelta(days=1))
        for serial in revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(start)
            if reason is not None:
                entry = entry.add_extension(x509.CRLReason(reason), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(signer or self.key, hashes.SHA256())

    def ocsp_response(
        self,
        cert: x509.Certificate,
        *,
        status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
        reason: x509.ReasonFlags | None = None,
        next_update: datetime | None = None,
        responder: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
    ) -> bytes:
        from cryptography.hazmat.primitives import serialization

        revoked = status is ocsp.OCSPCertStatus.REVOKED
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert,
            issuer=self.certificate,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=NOW - timedelta(minutes=1),
            next_update=next_update or NOW + timedelta(hours=1),
            revocation_time=NOW - timedelta(minutes=5) if revoked else None,
            revocation_reason=reason if revoked else None,
        )
        key, signer = responder or (self.key, self.certificate)
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer)
        if responder is not None:
            builder = builder.certificates([signer])
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def ocsp_responder(
        self, *, eku: bool = True
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        return self.issue("OCSP responder", eku=ExtendedKeyUsageOID.OCSP_SIGNING if eku else None)
