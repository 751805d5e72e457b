"""CMP certificate requests (RFC 9483 sections 4.1.1-4.1.4): ir, cr, p10cr, kur.

All four are the enrollment service's simpleenroll / simplereenroll: the same authorization,
register states, lease and audit as EST. ir, cr and p10cr with the temporary certificate
customize the device; kur (and cr, p10cr) with the operational certificate renew it. The
transactionID is recorded in the issuance lease's own commit (or, for a request that ends
before any lease, on its own), so a replayed or colliding id is never served twice: it is
refused (transactionIdInUse), or refused on its own merits.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ztpki.errors import Unavailable, ZtpkiError
from ztpki.node.authentication import IdentityKind
from ztpki.node.authorization import Operation
from ztpki.node.cmp_exchange import CmpExchange, CmpReply, DeliveredKey
from ztpki.node.cmp_record import CmpRecord, write_row
from ztpki.node.enrollment_types import Enrolled, KeyRequest, LoadedLabel
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
    PKIStatus,
    PollEntry,
    PollRepBody,
    StatusInfo,
    TransactionIdInUse,
    old_cert_id,
    verify_popo,
)
from ztpki.store.cmp_transactions import CmpTransaction, CmpTransactionState, TransactionIdTaken

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
    message, identity = exchange.message, exchange.identity
    record = CmpRecord(
        CmpTransaction(
            transaction_id=message.header.transaction_id,
            device_id=identity.device_id,
            label=exchange.label.name,
            body=message.body.type.value,
            signer_fingerprint=identity.fingerprint,
            state=CmpTransactionState.OPEN,
            created_at=exchange.now,
            updated_at=exchange.now,
            cert_req_id=cert_req_id,
            operation=operation.value,
            public_key_der=key.public_key_der,
            csr_der=key.csr_der,
            named_device_id=key.named_device_id,
        ),
        response_nonce=os.urandom(16),
        confirmed=message.header.implicit_confirm and exchange.label.config.cmp_implicit_confirm,
    )
    # A centrally generated key is not kept in the register: it cannot wait for a poll.
    pollable = operation is not Operation.SERVERKEYGEN
    return await serve(
        exchange, key, record, operation, message.body.type, exchange.label, pollable
    )


async def serve(
    exchange: CmpExchange,
    key: KeyRequest,
    record: CmpRecord,
    operation: Operation,
    requested: BodyType,
    label: LoadedLabel,
    pollable: bool,
) -> CmpReply:
    """Serve an open transaction's key request (the request itself, or a pollReq for it):
    the certificate, or -- ``pollable`` and the CA system slow or unavailable -- ``waiting``.

    The transaction's row goes into the register with the issuance lease (the enrollment
    service writes it); when the request ends before any lease, it is written here, so that
    its transactionID is never served again either way."""
    identity, service = exchange.identity, exchange.service
    cert_req_id = record.transaction.cert_req_id
    assert cert_req_id is not None
    enrollment = asyncio.ensure_future(
        service.enroll(operation, label, identity, key, endpoint=exchange.endpoint, cmp=record)
    )
    try:
        if pollable:
            # The issuance goes on in the background when the answer is ``waiting``: it lands
            # in the register, where the pollReq (on any worker) finds it.
            enrolled = await asyncio.wait_for(
                asyncio.shield(enrollment), service.limits.cmp_wait_seconds
            )
        else:
            enrolled = await enrollment
    except TimeoutError:
        if enrollment.done():
            raise
        await _open(exchange, record)
        if await _mark_waiting(exchange):
            _keep_running(enrollment)
            return _waiting(exchange, requested, cert_req_id, SLOW_CHECK_AFTER)
        # The row is no longer open: the issuance landed (its certificate in the row) while
        # this answer was being decided. Deliver it rather than have the device poll for it.
        return await _deliver(exchange, requested, record, await enrollment)
    except Unavailable as exc:
        if not pollable:
            await _reject(exchange, record)
            raise
        await _open(exchange, record)
        await _mark_waiting(exchange)
        return _waiting(exchange, requested, cert_req_id, exc.retry_after or 1)
    except TransactionIdTaken:
        # A replay: the enrollment service audited it; the row is another request's, so it
        # is left alone (FAIL_TABLE answers transactionIdInUse).
        raise
    except BaseException:
        enrollment.cancel()
        await _reject(exchange, record)
        raise
    return await _deliver(exchange, requested, record, enrolled)


# checkAfter when the CA system is slow rather than unavailable (it may answer any moment).
SLOW_CHECK_AFTER = 2
_BACKGROUND: set[asyncio.Future[Enrolled]] = set()


def _keep_running(enrollment: asyncio.Future[Enrolled]) -> None:
    """Hold a reference to an issuance answered ``waiting`` until it ends; its outcome is in
    the register and the audit trail (the enrollment service wrote both)."""
    _BACKGROUND.add(enrollment)

    def done(future: asyncio.Future[Enrolled]) -> None:
        _BACKGROUND.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.info("a CMP issuance answered 'waiting' ended: %s", future.exception())

    enrollment.add_done_callback(done)


async def _open(exchange: CmpExchange, record: CmpRecord) -> None:
    """The row of a request answered ``waiting``, for its pollReq (unless written already)."""
    try:
        await write_row(exchange.service.register, record)
    except TransactionIdTaken as exc:
        raise TransactionIdInUse(exc.message) from None


async def _reject(exchange: CmpExchange, record: CmpRecord) -> None:
    """A refused request's transaction ends rejected: closed if its row is in the register,
    else written so (its transactionID is spent; a replay of it is refused)."""
    register, now = exchange.service.register, exchange.service.now()
    if record.written:
        closing = register.close_cmp_transaction(
            record.transaction.transaction_id, state=CmpTransactionState.REJECTED, now=now
        )
        await asyncio.shield(closing)
        return
    rejected = replace(record.transaction, state=CmpTransactionState.REJECTED, updated_at=now)
    await asyncio.shield(register.begin_cmp_transaction(rejected))


async def _mark_waiting(exchange: CmpExchange) -> bool:
    """The row says the device was told to poll; False when it is no longer open."""
    transaction_id = exchange.message.header.transaction_id
    register = exchange.service.register
    return await register.mark_cmp_waiting(transaction_id, now=exchange.service.now())


def _waiting(
    exchange: CmpExchange, requested: BodyType, cert_req_id: int, check_after: int
) -> CmpReply:
    """RFC 9483 4.4: the request is accepted and its answer comes on a pollReq."""
    if exchange.message.body.type is BodyType.POLL_REQ:
        entry = PollEntry(cert_req_id, check_after, ("the customer CA system has not answered",))
        return CmpReply(PollRepBody((entry,)), outcome="waiting")
    waiting = StatusInfo(PKIStatus.WAITING, text=("the customer CA system has not answered",))
    response = CertResponse(cert_req_id, waiting)
    return CmpReply(CertRepBody(RESPONSE_TO[requested], (response,)), outcome="waiting")


async def _deliver(
    exchange: CmpExchange, requested: BodyType, record: CmpRecord, enrolled: Enrolled
) -> CmpReply:
    service = exchange.service
    cert_req_id = record.transaction.cert_req_id
    assert cert_req_id is not None
    certificate_der = enrolled.certificate.public_bytes(serialization.Encoding.DER)
    serial = serial_hex(enrolled.certificate)
    implicit, nonce = record.confirmed, record.response_nonce
    if enrolled.outcome != "issued":
        # A redelivery: no issuance commit carried the row's certificate, so it goes alone.
        await service.register.record_cmp_issued(
            record.transaction.transaction_id,
            serial=serial,
            certificate_der=certificate_der,
            response_nonce=nonce,
            confirmed=implicit,
            now=service.now(),
        )
    if implicit:
        await service.confirm_certificate(exchange.identity, serial, endpoint=exchange.endpoint)
    response = CertResponse(cert_req_id, StatusInfo.accepted(), certificate_der)
    return CmpReply(
        CertRepBody(RESPONSE_TO[requested], (response,)),
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
