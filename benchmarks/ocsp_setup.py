"""benchmarks/ocsp.py's data: a CA system with issued and revoked certificates, the same
status as an OpenSSL index.txt, a delegated responder for openssl, and OCSP requests."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ca_throughput import ENV
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.operations import open_store
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant
from ztpki.pki.keys import KeySpec, generate_private_key, key_spec_of
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.ocsp import issue_responder_certificate
from ztpki.pki.pem import certificate_der, serial_hex
from ztpki.pki.profiles import CertificateProfile
from ztpki.store.records import CertificateStatus, IssuedCertificate, RevocationReason

# --key: the CA's key, and so both responders' (ztpki's delegated responder follows its CA).
KEYS = {"ec": KeySpec.EC_P256, "rsa": KeySpec.RSA_2048}

CA_NAME = "factory"
REASONS = [RevocationReason.KEY_COMPROMISE, RevocationReason.SUPERSEDED]


def ztpki(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ztpki", *args], env=ENV, check=True, capture_output=True)


def issue_all(authority: CertificateAuthority, count: int, now: datetime) -> list[x509.Certificate]:
    """``count`` device certificates (one key for all: the benchmark is about status)."""
    public_key = generate_private_key(KeySpec.EC_P256).public_key()
    certificates = []
    for n in range(count):
        grant = IssuanceGrant(
            subject=build_subject(f"bench-{n}", SubjectFields(), serial_number=None),
            profile=CertificateProfile.DEVICE,
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=365),
        )
        certificates.append(authority.issue(public_key, grant))
    return certificates


def record_all(
    system: CASystemDirectory, certificates: Sequence[x509.Certificate], revoked: int, now: datetime
) -> dict[int, tuple[datetime, RevocationReason]]:
    """Record every certificate in the store and revoke the first ``revoked`` of them."""
    records = []
    for n, certificate in enumerate(certificates):
        der = certificate_der(certificate)
        record = IssuedCertificate(
            serial=serial_hex(certificate),
            ca_name=CA_NAME,
            device_id=f"bench-{n}",
            subject=certificate.subject.rfc4514_string(),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            status=CertificateStatus.ACTIVE,
            request_id=f"bench-{n}",
            fingerprint=hashlib.sha256(der).hexdigest(),
            issued_at=now,
            certificate_der=der,
        )
        records.append((record, False))
    revocations: dict[int, tuple[datetime, RevocationReason]] = {}
    with open_store(system) as store:
        for start in range(0, len(records), 1000):
            store.record_issuances(records[start : start + 1000])
        for n, certificate in enumerate(certificates[:revoked]):
            at = (now - timedelta(minutes=n % 60)).replace(microsecond=0)
            reason = REASONS[n % len(REASONS)]
            store.revoke(CA_NAME, serial_hex(certificate), reason=reason, at=at)
            revocations[certificate.serial_number] = (at, reason)
    return revocations


def write_index(
    path: Path,
    certificates: Sequence[x509.Certificate],
    revocations: dict[int, tuple[datetime, RevocationReason]],
) -> None:
    """The same status as an OpenSSL CA database (ca(1) index.txt)."""

    def stamp(when: datetime) -> str:
        return when.strftime("%y%m%d%H%M%SZ")

    lines = []
    for certificate in certificates:
        expiry = stamp(certificate.not_valid_after_utc)
        serial = format(certificate.serial_number, "X")
        subject = "/CN=" + certificate.subject.rfc4514_string().removeprefix("CN=")
        revoked = revocations.get(certificate.serial_number)
        if revoked is None:
            lines.append(f"V\t{expiry}\t\t{serial}\tunknown\t{subject}")
        else:
            at, reason = revoked
            lines.append(f"R\t{expiry}\t{stamp(at)},{reason.value}\t{serial}\tunknown\t{subject}")
    path.write_text("\n".join(lines) + "\n")


def build_requests(
    certificates: Sequence[x509.Certificate], issuer: x509.Certificate, *, nonce: bool
) -> list[bytes]:
    requests = []
    for certificate in certificates:
        builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1())
        if nonce:
            builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
        requests.append(builder.build().public_bytes(serialization.Encoding.DER))
    return requests


@dataclass(frozen=True)
class Setup:
    system: Path
    authority: CertificateAuthority
    certificates: list[x509.Certificate]
    revocations: dict[int, tuple[datetime, RevocationReason]]


def make_setup(work: Path, spec: KeySpec, issued: int, revoked: int, now: datetime) -> Setup:
    """In ``work``: a CA system whose CA has a ``spec`` key, its certificates recorded and
    revoked, index.txt, ca.pem, and responder.pem/.key (a delegated responder as ztpki issues
    it, of the CA key's algorithm) for openssl."""
    system = work / "system"
    ztpki("ca", "init", "--dir", str(system), "--name", CA_NAME, "--key", spec.value)
    directory = CASystemDirectory(system)
    authority = directory.load_authority(CA_NAME, passphrase=ENV["ZTPKI_CA_PASSPHRASE"].encode())
    print(f"[{spec.value}] issuing {issued} certificates, revoking {revoked} ...", flush=True)
    certificates = issue_all(authority, issued, now)
    revocations = record_all(directory, certificates, revoked, now)
    write_index(work / "index.txt", certificates, revocations)
    shutil.copy(directory.ca_dir(CA_NAME) / "ca.pem", work / "ca.pem")
    responder_key = generate_private_key(key_spec_of(authority.key))
    responder = issue_responder_certificate(
        authority.certificate, authority.key, responder_key, now=now
    )
    (work / "responder.pem").write_bytes(responder.public_bytes(serialization.Encoding.PEM))
    key_file = work / "responder.key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        responder_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Setup(system, authority, certificates, revocations)
