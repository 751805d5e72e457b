"""pollReq (RFC 9483 section 4.4): the device asks again for a certificate it was told to wait
for, because the customer CA system was slow or unavailable.

The transaction's row in the register holds the key request it was opened with, so any worker
of any node machine (after a restart too) serves the poll: through the same enrollment service,
lease and register states as the request itself, so the device still gets exactly one
certificate (one the background issuance already landed is redelivered, never issued again).
The answer is another pollRep(checkAfter), or the ip/cp/kup the request would have had.
"""

from __future__ import annotations

import os

from ztpki.node.authorization import Operation
from ztpki.node.cmp_enroll import serve
from ztpki.node.cmp_exchange import CmpExchange, CmpReply
from ztpki.node.cmp_record import CmpRecord, RowState
from ztpki.node.enrollment_types import KeyRequest
from ztpki.protocol.cmp import (
    BadCertId,
    BadRequest,
    BodyType,
    CMPNotAuthorized,
    PollReqBody,
)


async def poll(exchange: CmpExchange) -> CmpReply:
    """Answer a pollReq for a transaction answered ``waiting``, or refuse it."""
    body = exchange.message.body
    assert isinstance(body, PollReqBody)
    transaction_id = exchange.message.header.transaction_id
    transaction = await exchange.service.register.cmp_transaction(transaction_id)
    if transaction is None:
        raise BadRequest(
            f"no CMP transaction {transaction_id.hex()} on this node: poll with the "
            "transactionID of the request that was answered 'waiting'"
        )
    if transaction.signer_fingerprint != exchange.identity.fingerprint:
        raise CMPNotAuthorized(
            "the pollReq is signed with another certificate than the request it polls for"
        )
    if body.cert_req_ids != (transaction.cert_req_id,):
        raise BadCertId(
            f"the pollReq names certReqId {', '.join(map(str, body.cert_req_ids))}; the "
            f"request of this transaction is certReqId {transaction.cert_req_id}"
        )
    if not transaction.waiting or transaction.public_key_der is None:
        raise BadRequest(
            f"CMP transaction {transaction_id.hex()} is {transaction.state.value}: "
            "there is nothing to poll for"
        )
    assert transaction.operation is not None and transaction.cert_req_id is not None
    key = KeyRequest(transaction.public_key_der, transaction.named_device_id, transaction.csr_der)
    implicit = exchange.message.header.implicit_confirm
    record = CmpRecord(
        transaction,
        response_nonce=os.urandom(16),
        confirmed=implicit and exchange.label.config.cmp_implicit_confirm,
        state=RowState.WRITTEN,
        polled=True,
    )
    return await serve(
        exchange,
        key,
        record,
        Operation(transaction.operation),
        BodyType(transaction.body),
        exchange.service.label(transaction.label),
        pollable=True,
    )
