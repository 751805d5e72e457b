"""certConf -> pkiConf (RFC 9483 section 4.1.1): CMP's confirmation of a delivered certificate.

An accepted certConf does what the first EST request with the new certificate does: the
device becomes customized and its temporary certificate is retired (or a renewal is
confirmed and the previous certificate revoked after its grace). It must come from the
signer of the request, name the certificate issued in the transaction by its hash and
certReqId, and answer the nonce the node's ip carried; otherwise nothing is confirmed. A
certConf that never comes leaves the device as an EST answer never received does: it may
ask again, and the unconfirmed certificate is redelivered or superseded.
"""

from __future__ import annotations

import logging

from cryptography import x509

from ztpki.node.authorization import Refused
from ztpki.node.cmp_exchange import CmpExchange, CmpReply
from ztpki.protocol.cmp import (
    BadCertId,
    BadRequest,
    CertConfBody,
    CMPError,
    CMPNotAuthorized,
    FailInfo,
    PKIConfBody,
    PKIStatus,
    certificate_hash,
)
from ztpki.store.cmp_transactions import CmpTransaction, CmpTransactionState

log = logging.getLogger(__name__)


def _check_hash(transaction: CmpTransaction, body: CertConfBody) -> bool:
    """True if the device accepts the certificate, False if it rejects it; BadCertId if the
    certConf names anything else than the certificate of the transaction."""
    if len(body.statuses) != 1:
        raise BadCertId(f"certConf must confirm exactly one certificate, not {len(body.statuses)}")
    (status,) = body.statuses
    assert transaction.certificate_der is not None
    certificate = x509.load_der_x509_certificate(transaction.certificate_der)
    if status.cert_req_id != transaction.cert_req_id or status.cert_hash != certificate_hash(
        certificate, status.hash_alg
    ):
        raise BadCertId(
            "certConf's certHash or certReqId does not match the certificate issued in this "
            "transaction: nothing confirmed"
        )
    return status.status is None or status.status.status is not PKIStatus.REJECTION


async def confirm(exchange: CmpExchange) -> CmpReply:
    message, identity, service = exchange.message, exchange.identity, exchange.service
    body = message.body
    assert isinstance(body, CertConfBody)
    transaction_id = message.header.transaction_id
    transaction = await service.register.cmp_transaction(transaction_id)
    if transaction is None or transaction.state in (
        CmpTransactionState.OPEN,
        CmpTransactionState.REJECTED,
    ):
        raise BadRequest(
            f"no certificate awaits confirmation in transaction {transaction_id.hex()}"
        )
    if (
        transaction.device_id != identity.device_id
        or transaction.signer_fingerprint != identity.fingerprint
    ):
        raise CMPNotAuthorized(
            "certConf must be protected by the certificate that protected the request"
        )
    if message.header.recip_nonce != transaction.response_nonce:
        raise CMPError(
            "certConf's recipNonce is not the senderNonce of the node's answer",
            fail_info=FailInfo.BAD_RECIPIENT_NONCE,
        )
    accepted = _check_hash(transaction, body)
    assert transaction.serial is not None
    if transaction.state is CmpTransactionState.CONFIRMED:
        return CmpReply(PKIConfBody(), outcome="served")  # a certConf sent again (pkiConf lost)
    if not accepted:
        # The device refused the certificate: as if the answer never arrived (it may ask
        # again; the unconfirmed certificate is then superseded).
        await service.register.close_cmp_transaction(
            transaction_id, state=CmpTransactionState.REJECTED, now=service.now()
        )
        await service.record_refusal(
            exchange.endpoint,
            identity,
            BadRequest(f"the device rejected certificate {transaction.serial} in certConf"),
        )
        return CmpReply(PKIConfBody(), outcome="rejected-by-device")
    try:
        # The transaction closes in the confirmation's own commit (one commit, as EST's
        # first request with the new certificate) ...
        closed = await service.confirm_certificate(
            identity, transaction.serial, endpoint=exchange.endpoint, cmp=transaction_id
        )
    except Refused as exc:  # superseded meanwhile (the device asked again), blocked...
        await service.record_refusal(exchange.endpoint, identity, exc)
        raise
    if not closed:  # ... unless the device was confirmed already (an EST request, say)
        await service.register.close_cmp_transaction(
            transaction_id, state=CmpTransactionState.CONFIRMED, now=service.now()
        )
    return CmpReply(PKIConfBody(), outcome="confirmed")
