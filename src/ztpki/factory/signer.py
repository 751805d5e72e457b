"""The manifest signer: a document-signing credential from a factory CA, and signing with it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509

from ztpki.casystem.client import CAClient
from ztpki.credentials import Credential
from ztpki.errors import ConfigurationError, VerificationFailed, ZtpkiError
from ztpki.factory.answer import accept_answer
from ztpki.factory.first_client import name_device
from ztpki.pki.device_ids import EVERY_DEVICE_ID
from ztpki.protocol.enrollment import EnrollmentRequest
from ztpki.protocol.manifest import (
    Manifest,
    ManufacturerTrust,
    VerifiedManifest,
    manifest_csv,
    sign_manifest,
    verify_manifest,
)
from ztpki.secretfiles import write_public_file

SIGNER_ENV = "ZTPKI_SIGNER_PASSPHRASE"


async def enroll_signer(
    client: CAClient,
    *,
    signer_id: str,
    ca_name: str,
    trust: Sequence[x509.Certificate],
    now: datetime,
    reissue: bool = False,
) -> Credential:
    """Enroll over the XML protocol with a manifest-signer CA; the answer must verify as one."""
    request = EnrollmentRequest(
        request_id=uuid.uuid4().hex, device_id=signer_id, ca=ca_name, reissue=reissue
    )
    try:
        answer = await client.enroll(request)
        accepted = accept_answer(
            answer, device_id=signer_id, anchors=trust or None, now=now, document_signer=True
        )
    except ZtpkiError as exc:
        raise name_device(signer_id, exc) from None
    return Credential(
        key=accepted.private_key,
        chain=(accepted.certificate, *accepted.intermediates),
        trust_anchors=accepted.trust_anchors,
    )


def verify_own_manifest(
    data: bytes, *, anchors: Sequence[x509.Certificate], now: datetime
) -> VerifiedManifest:
    """Verify a manifest as a customer would, under whichever manufacturer name it gives."""
    trust = ManufacturerTrust(None, tuple(anchors), EVERY_DEVICE_ID)
    return verify_manifest(data, manufacturers=[trust], now=now)


def sign_checked(manifest: Manifest, signer: Credential, *, now: datetime) -> bytes:
    """Sign, then verify as a customer would with the signer's own anchors before handing out."""
    data = sign_manifest(manifest, key=signer.file_key, chain=signer.chain)
    try:
        verify_own_manifest(data, anchors=signer.trust_anchors, now=now)
    except VerificationFailed as exc:
        raise ConfigurationError(
            f"this credential cannot sign manifests a customer would accept: {exc.message}"
        ) from None
    return data


def write_manifest(path: Path, manifest: Manifest, signed: bytes, *, csv_path: Path | None) -> None:
    """The signed manifest (JSON) and, when asked, its unsigned CSV view."""
    write_public_file(path, signed)
    if csv_path is not None:
        write_public_file(csv_path, manifest_csv(manifest).encode("utf-8"))
