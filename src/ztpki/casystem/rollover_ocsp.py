"""OCSP for what a root's earlier key issued, after `ca rollover` deleted that key.

A relying party asks about a certificate with a CertID naming the key that signed it
(RFC 6960 4.1.1), and accepts an answer signed by that key or by a responder certificate that
key issued (4.2.2.2). The old key is deleted at the rollover, so before it is, it issues one
delegated responder certificate (id-kp-OCSPSigning, id-pkix-ocsp-nocheck) for a new responder
key, valid until the last certificate the old key issued expires. It can never be renewed:
no key is left to sign a successor. The CA system keeps it in::

    cas/NAME/previous-keys/<SKI of the old key>/ocsp.pem       the responder certificate
    cas/NAME/previous-keys/<SKI of the old key>/ocsp.key.pem   its key, encrypted with the
                                                               CA system's passphrase (0600)

The key is a file even for a CA whose key is in a token: it is a responder's key, not a CA's,
and like every key of the system it opens with the system's passphrase. Crash safety is the
rollover's: both files are staged with the new key and moved into place by ``finish`` before
the pending directory goes (casystem/rollover.py).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from cryptography import x509

from ztpki.casystem.directory import CASystemDirectory
from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.keys import decode_pkcs8, encode_pkcs8_pem, generate_private_key, key_spec_of
from ztpki.pki.ocsp import RESPONDER_LIFETIME, ResponseSigner, issue_responder_certificate
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS
from ztpki.pki.pem import certificates_pem, load_certificates_pem, serial_hex
from ztpki.pki.rollover import issued_by
from ztpki.secretfiles import write_private_file, write_public_file

log = logging.getLogger(__name__)

PREVIOUS_KEYS = "previous-keys"
CERT_FILE = "ocsp.pem"
KEY_FILE = "ocsp.key.pem"
# In the rollover's staging (then pending) directory.
STAGED_CERT = "previous-ocsp.pem"
STAGED_KEY = "previous-ocsp.key.pem"


def issued_until(directory: CASystemDirectory, name: str, *, now: datetime) -> datetime:
    """When the last certificate root CA ``name`` has issued so far expires: the ones in the
    issuance store, and the system's own CAs it certified."""
    from ztpki.casystem.operations import open_store  # the store only for this one read

    root = directory.certificate(name)
    ends = [now]
    for other in directory.ca_names():
        certificate = directory.certificate(other)
        if other != name and certificate.issuer == root.subject and issued_by(certificate, root):
            ends.append(certificate.not_valid_after_utc)
    location = directory.store_location
    if not (isinstance(location, Path) and not location.exists()):  # no store: none issued
        with open_store(directory) as store:
            ends.extend(record.not_after for record in store.issued(ca_name=name))
    return max(ends)


def stage_previous_responder(
    staging: Path,
    old: CertificateAuthority,
    *,
    until: datetime,
    passphrase: bytes | None,
    now: datetime,
) -> x509.Certificate:
    """The old key's responder certificate and key, written to ``staging``."""
    key = generate_private_key(key_spec_of(old.certificate.public_key()))
    # At least a responder's usual week, even when the old key issued nothing that lasts;
    # never past the old root (issue_responder_certificate keeps it inside).
    lifetime = max(until - now, RESPONDER_LIFETIME)
    certificate = issue_responder_certificate(
        old.certificate, old.key, key, now=now, lifetime=lifetime
    )
    pem = encode_pkcs8_pem(key, passphrase=passphrase, kdf_rounds=AT_REST_KDF_ROUNDS)
    write_private_file(staging / STAGED_KEY, pem)
    write_public_file(staging / STAGED_CERT, certificates_pem([certificate]), durable=True)
    return certificate


def finish_previous_responder(pending: Path, ca_dir: Path, old_root: x509.Certificate) -> None:
    """Move the staged responder of ``old_root``'s key into ``previous-keys/`` (idempotent)."""
    if not (pending / STAGED_CERT).exists():
        # Staged by a version before this one: the old key is gone, nothing can be issued.
        log.warning(
            "the interrupted rollover staged no OCSP responder for the old key of %s: "
            "OCSP answers nothing about what that key issued (the CRL still covers it)",
            old_root.subject.rfc4514_string(),
        )
        return
    target = ca_dir / PREVIOUS_KEYS / _key_id(old_root)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_file(target / KEY_FILE, (pending / STAGED_KEY).read_bytes())
    write_public_file(target / CERT_FILE, (pending / STAGED_CERT).read_bytes(), durable=True)


def previous_responders(
    directory: CASystemDirectory, name: str, *, passphrase: bytes | None, now: datetime
) -> tuple[ResponseSigner, ...]:
    """The responders of CA ``name``'s earlier keys that are still valid, ready to sign."""
    base = directory.ca_dir(name) / PREVIOUS_KEYS
    if not base.is_dir():
        return ()
    roots = directory.previous_roots(name)
    signers = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        certificate = load_certificates_pem((folder / CERT_FILE).read_bytes())[0]
        if certificate.not_valid_after_utc <= now:
            continue  # everything its key issued has expired too
        issuer = next((r for r in roots if issued_by(certificate, r)), None)
        if issuer is None:
            raise ConfigurationError(
                f"{folder / CERT_FILE} was issued by none of the earlier keys of CA {name} "
                f"(links.pem); remove {folder} or restore links.pem"
            )
        try:
            key = decode_pkcs8((folder / KEY_FILE).read_bytes(), passphrase=passphrase)
        except MalformedInput:
            raise ConfigurationError(
                f"cannot open {folder / KEY_FILE}: wrong or missing passphrase "
                "(--passphrase-file or ZTPKI_CA_PASSPHRASE)"
            ) from None
        signers.append(ResponseSigner(issuer, certificate, key))
        log.info(
            "CA %s answers OCSP for its earlier key with responder serial=%s until %s",
            name,
            serial_hex(certificate),
            certificate.not_valid_after_utc.isoformat(timespec="seconds"),
        )
    return tuple(signers)


def _key_id(root: x509.Certificate) -> str:
    return x509.SubjectKeyIdentifier.from_public_key(root.public_key()).digest.hex()
