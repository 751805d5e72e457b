"""CMP certificate requests (RFC 9483 sections 4.1.1-4.1.4): ir, cr, p10cr, kur.

All four are the enrollment service's simpleenroll / simplereenroll: the same authorization,
register states, lease and audit as EST. ir, cr and p10cr with the temporary certificate
customize the device; kur (and cr, p10cr) with the operational certificate renew it. The
transactionID is recorded before anything else, so a replayed or colliding id is refused
(transactionIdInUse) whatever happens to the request after.
"""

from __future__ import annotations

import logging
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ztpki.errors import ZtpkiError
from ztpki.node.authentication import IdentityKind
from ztpki.node.authorization import Operation
from ztpki.node.cmp_exchange import CmpExchange, CmpReply, DeliveredKey
from ztpki.node.enrollment_types import KeyRequest
from ztpki.pki.pem import serial_hex
from ztpki.protocol.cmp import (
    RESPONSE_TO,
    BadCertId,
    BadDataFormat,
    BadRequest,
    BodyType,
    CertRepBody,
    CertReqBody,
    CertResponse,
    CMPNotAuthorized,
    P10crBody,
    StatusInfo,
    TransactionIdInUse,
    old_cert_id,
    verify_popo,
)
from ztpki.store.cmp_transactions import CmpTransaction, CmpTransactionState

log = logging.getLogger(__name__)

# RFC 9483 section 4.1.4: the certReqId of a p10cr's response.
P10CR_CERT_REQ_ID = -1


def named_device_id(subject: x509.Name | None) -> str | None:
    """The device id a template names: serialNumber if present, else CN (as for a CSR)."""
    if subject is None:
        return None
    for oid in (NameOID.SERIAL_NUMBER, NameOID.COMMON_NAME):
        values = {a.value for a in subject.get_attributes_for_oid(oid)}
        if len(values) > 1:
            raise BadRequest("the certificate template's subject names several device ids")
        for value in values:
            if isinstance(value, str) and value:
                return value
    return None


def _key_request(exchange: CmpExchange) -> tuple[KeyRequest, int]:
    body = exchange.message.body
    if isinstance(body, P10crBody):
        try:
            csr = x509.load_der_x509_csr(body.csr_der)
        except ValueError:
            raise BadDataFormat("the p10cr's PKCS#10 request does not parse") from None
        try:
            return KeyRequest.from_csr(csr), P10CR_CERT_REQ_ID
        except ZtpkiError as exc:
            raise BadDataFormat(exc.message) from None
    assert isinstance(body, CertReqBody)
    if len(body.requests) != 1:
        raise BadRequest(
            f"one certificate request per message (RFC 9483), not {len(body.requests)}"
        )
    (request,) = body.requests
    verify_popo(request)
    assert request.public_key_der is not None  # verify_popo checked
    if body.type is BodyType.KUR:
        _check_old_certificate(exchange, request)
    named = named_device_id(request.subject)
    return KeyRequest(request.public_key_der, named), request.cert_req_id


def _check_old_certificate(exchange: CmpExchange, request: object) -> None:
    """kur updates the certificate that protects it; an oldCertID naming another is refused."""
    from ztpki.protocol.cmp import CertRequest

    assert isinstance(request, CertRequest)
    named = old_cert_id(request)
    signer = exchange.signer
    if named is not None and (
        named.serial_number != signer.serial_number or named.issuer != signer.issuer
    ):
        raise BadCertId(
            "kur's oldCertID names another certificate than the one protecting the request"
        )


def _operation(exchange: CmpExchange) -> Operation:
    kind = exchange.message.body.type
    if kind is BodyType.KUR:
        return Operation.SIMPLEREENROLL
    if kind is not BodyType.IR and exchange.identity.kind is IdentityKind.OPERATIONAL:
        return Operation.SIMPLEREENROLL  # cr / p10cr with the operational certificate
    return Operation.SIMPLEENROLL


async def enroll(exchange: CmpExchange) -> CmpReply:
    """Answer ir/cr/p10cr/kur with ip/cp/kup carrying the certificate, or refuse."""
    message, identity = exchange.message, exchange.identity
    if message.body.type is BodyType.KUR and identity.kind is IdentityKind.TEMPORARY:
        raise CMPNotAuthorized(
            "kur updates an operational certificate; with the temporary certificate, "
            "customize with ir (or cr, p10cr)"
        )
    key, cert_req_id = _key_request(exchange)
    return await issue(exchange, key, cert_req_id, _operation(exchange))


async def issue(
    exchange: CmpExchange, key: KeyRequest, cert_req_id: int, operation: Operation
) -> CmpReply:
    """The transaction, the enrollment service's answer and the reply for one request
    (``operation`` SERVERKEYGEN: the reply also carries the key the CA generated)."""
    message, identity, service = exchange.message, exchange.identity, exchange.service
    transaction_id = message.header.transaction_id
    began = await service.register.begin_cmp_transaction(
        CmpTransaction(
            transaction_id=transaction_id,
            device_id=identity.device_id,
            label=exchange.label.name,
            body=message.body.type.value,
            signer_fingerprint=identity.fingerprint,
            state=CmpTransactionState.OPEN,
            created_at=exchange.now,
            updated_at=exchange.now,
            cert_req_id=cert_req_id,
        )
    )
    if not began:
        raise TransactionIdInUse(
            f"transactionID {transaction_id.hex()} was used before: start every request "
            "with a new transactionID"
        )
    try:
        enrolled = await service.enroll(
            operation, exchange.label, identity, key, endpoint=exchange.endpoint
        )
    except BaseException:
        await service.register.close_cmp_transaction(
            transaction_id, state=CmpTransactionState.REJECTED, now=service.now()
        )
        raise
    certificate_der = enrolled.certificate.public_bytes(serialization.Encoding.DER)
    serial = serial_hex(enrolled.certificate)
    implicit = message.header.implicit_confirm and exchange.label.config.cmp_implicit_confirm
    nonce = os.urandom(16)
    await service.register.record_cmp_issued(
        transaction_id,
        serial=serial,
        certificate_der=certificate_der,
        response_nonce=nonce,
        confirmed=implicit,
        now=service.now(),
    )
    if implicit:
        await service.confirm_certificate(identity, serial, endpoint=exchange.endpoint)
    response = CertResponse(cert_req_id, StatusInfo.accepted(), certificate_der)
    return CmpReply(
        CertRepBody(RESPONSE_TO[message.body.type], (response,)),
        implicit_confirm=implicit,
        sender_nonce=nonce,
        # The chain of the new certificate, so the device can verify it (section 4.1.1).
        extra_certs=tuple(c.public_bytes(serialization.Encoding.DER) for c in enrolled.chain),
        outcome=enrolled.outcome,
        delivered_key=(
            None
            if enrolled.private_key_der is None
            else DeliveredKey(cert_req_id, enrolled.private_key_der, exchange.signer)
        ),
    )
