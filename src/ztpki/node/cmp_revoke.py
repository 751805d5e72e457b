"""rr -> rp (RFC 9483 section 4.2): a device revokes its own certificate.

The request must be protected by the certificate it names (issuer and serial), and that must
be the device's live operational certificate: a device speaks for itself only, and a
temporary certificate is its manufacturer's to revoke. Accepted, the device is retired in the
register (final, as ``node retire``) and the certificate is queued for revocation at the
customer CA system with the reason the device gave; the CA system's CRL and OCSP then say so
(invariant 7). certificateHold and removeFromCRL are the operator's (``node block``).
"""

from __future__ import annotations

import logging

from cryptography import x509

from ztpki.node.authentication import IdentityKind
from ztpki.node.cmp_exchange import CmpExchange, CmpReply
from ztpki.node.enrollment_types import audit_record
from ztpki.node.revocation_orders import operator_order
from ztpki.pki.crl import RevocationReason
from ztpki.protocol.cmp import (
    BadCertId,
    BadRequest,
    CMPNotAuthorized,
    RevRepBody,
    RevReqBody,
    StatusInfo,
)
from ztpki.store.records import DeviceState

log = logging.getLogger(__name__)

_OPERATOR_ONLY = {x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl}


def _reason(flag: x509.ReasonFlags | None) -> RevocationReason:
    if flag is None:
        return RevocationReason.UNSPECIFIED
    if flag in _OPERATOR_ONLY:
        raise BadRequest(
            f"a device cannot ask for {flag.value}: holds are the operator's (node block)"
        )
    return RevocationReason(flag.value)


async def revoke(exchange: CmpExchange) -> CmpReply:
    body, identity, service = exchange.message.body, exchange.identity, exchange.service
    assert isinstance(body, RevReqBody)
    if len(body.details) != 1:
        raise BadRequest(f"one certificate per rr (RFC 9483), not {len(body.details)}")
    (details,) = body.details
    if identity.kind is not IdentityKind.OPERATIONAL:
        raise CMPNotAuthorized(
            "a temporary certificate cannot be revoked over CMP: it is its manufacturer's "
            "to revoke; a device revokes its operational certificate, signed with it"
        )
    signer = exchange.signer
    if details.serial_number != signer.serial_number or details.issuer != signer.issuer:
        raise BadCertId(
            "rr must name the certificate that protects it (issuer and serial number): a "
            "device revokes its own certificate only"
        )
    reason = _reason(details.reason)
    device = await service.register.get(identity.device_id)
    if (
        device is None
        or device.state is not DeviceState.CUSTOMIZED
        or device.issued_serial != identity.serial
    ):
        raise CMPNotAuthorized(
            f"certificate {identity.serial} is not device {identity.device_id}'s live one"
        )
    label = service.labels.get(device.issuance_label or exchange.label.name, exchange.label)
    order = operator_order(
        device, label.config, reason=reason, cause=f"revoked by the device over CMP ({reason})"
    )
    now = service.now()
    record = audit_record(
        exchange.endpoint,
        identity,
        "retired",
        f"the device revoked its certificate over CMP ({reason.value}): never enrolled again",
        at=now,
        serial=identity.serial,
    )
    if not await service.register.retire(
        identity.device_id,
        now=now,
        audit=record,
        revocations=[] if order is None else [order],
        issued_serial=device.issued_serial,
    ):
        raise CMPNotAuthorized(f"device {identity.device_id} changed meanwhile; nothing revoked")
    service.revocations_queued()
    log.info(
        "device %s revoked serial=%s over CMP (%s)", identity.device_id, identity.serial, reason
    )
    return CmpReply(RevRepBody((StatusInfo.accepted(),)), outcome="revoked")
