"""The device's checks on every CMP answer (device/cmp_transaction.py), sans I/O: only an
answer of this transaction, to the last request, signed by a node the device trusts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.support.cmp_mock import MockPKI

from ztpki.device.cmp_activation import issuer_chain, trust_for
from ztpki.device.cmp_transaction import CMPRefused, CMPTransaction, Credentials
from ztpki.errors import MalformedInput, VerificationFailed
from ztpki.protocol.cmp import (
    BodyType,
    ErrorBody,
    FailInfo,
    GenMsgBody,
    Header,
    InfoTypeAndValue,
    PKIConfBody,
    StatusInfo,
    sign_message,
)

NOW = datetime.now(UTC)
GENP = frozenset({BodyType.GENP})


@pytest.fixture(scope="module")
def pki() -> MockPKI:
    return MockPKI.create()


def _transaction(pki: MockPKI, anchors: Sequence[x509.Certificate] | None = None) -> CMPTransaction:
    credentials = Credentials(pki.device_key, pki.device)
    return CMPTransaction(credentials, trust_for(anchors or [pki.ca]))


def _answer(
    pki: MockPKI,
    transaction: CMPTransaction,
    body: object,
    *,
    signer: tuple[object, x509.Certificate] | None = None,
    **changes: object,
) -> bytes:
    key, cert = signer or (pki.server_key, pki.server)
    header = Header(
        sender=cert.subject,
        recipient=pki.device.subject,
        transaction_id=transaction.transaction_id,
        sender_nonce=os.urandom(16),
        recip_nonce=transaction.last_nonce,
        message_time=NOW,
    )
    header = replace(header, **changes)  # type: ignore[arg-type]
    der = cert.public_bytes(serialization.Encoding.DER)
    return sign_message(header, body, key, extra_certs=(der,))  # type: ignore[arg-type]


GENM = GenMsgBody(BodyType.GENM, (InfoTypeAndValue("1.3.6.1.5.5.7.4.17"),))
GENP_BODY = GenMsgBody(BodyType.GENP, (InfoTypeAndValue("1.3.6.1.5.5.7.4.17"),))


def test_ok_answer_of_this_transaction(pki: MockPKI) -> None:
    transaction = _transaction(pki)
    transaction.request(GENM, now=NOW)
    message = transaction.answer(_answer(pki, transaction, GENP_BODY), GENP, now=NOW)
    assert message.body == GENP_BODY
    assert transaction.node_certificate == pki.server
    # The next request answers the node's nonce.
    transaction.request(GENM, now=NOW)
    assert transaction.node_nonce == message.header.sender_nonce


@pytest.mark.parametrize(
    ("changes", "error", "phrase"),
    [
        ({"transaction_id": os.urandom(16)}, VerificationFailed, "another CMP transaction"),
        ({"recip_nonce": os.urandom(16)}, VerificationFailed, "replayed"),
        ({"recip_nonce": None}, VerificationFailed, "nonce"),
    ],
    ids=["fail-other-transaction", "fail-stale-nonce", "fail-no-nonce"],
)
def test_fail_answer_not_to_this_request(
    pki: MockPKI, changes: dict[str, object], error: type[Exception], phrase: str
) -> None:
    transaction = _transaction(pki)
    transaction.request(GENM, now=NOW)
    with pytest.raises(error, match=phrase):
        transaction.answer(_answer(pki, transaction, GENP_BODY, **changes), GENP, now=NOW)
    assert transaction.node_nonce is None  # nothing of the answer was taken


def test_fail_answer_from_an_untrusted_signer(pki: MockPKI) -> None:
    stranger = MockPKI.create()
    transaction = _transaction(pki)
    transaction.request(GENM, now=NOW)
    forged = _answer(pki, transaction, GENP_BODY, signer=(stranger.server_key, stranger.server))
    with pytest.raises(VerificationFailed, match="does not verify"):
        transaction.answer(forged, GENP, now=NOW)


def test_fail_second_signer_in_one_transaction(pki: MockPKI) -> None:
    other_key = pki.device_key  # another certificate of the same trusted CA
    transaction = _transaction(pki)
    transaction.request(GENM, now=NOW)
    transaction.answer(_answer(pki, transaction, GENP_BODY), GENP, now=NOW)
    transaction.request(GENM, now=NOW)
    switched = _answer(pki, transaction, GENP_BODY, signer=(other_key, pki.device))
    with pytest.raises(VerificationFailed, match="another certificate"):
        transaction.answer(switched, GENP, now=NOW)


def test_fail_error_body_and_unexpected_body(pki: MockPKI) -> None:
    transaction = _transaction(pki)
    transaction.request(GENM, now=NOW)
    refusal = ErrorBody(StatusInfo.rejection(FailInfo.NOT_AUTHORIZED, "blocked"))
    with pytest.raises(CMPRefused, match="notAuthorized") as caught:
        transaction.answer(_answer(pki, transaction, refusal), GENP, now=NOW)
    assert caught.value.status.fail_info == frozenset({FailInfo.NOT_AUTHORIZED})
    transaction.request(GENM, now=NOW)
    with pytest.raises(MalformedInput, match="pkiconf"):
        transaction.answer(_answer(pki, transaction, PKIConfBody()), GENP, now=NOW)
    with pytest.raises(MalformedInput, match="not a PKIMessage"):
        transaction.answer(b"\x30\x03\x02\x01\x00", GENP, now=NOW)


def test_ok_issuer_chain_leaves_other_certificates_out(pki: MockPKI) -> None:
    stranger = MockPKI.create()
    leaf = pki.device
    assert issuer_chain(leaf, [stranger.server, stranger.ca, pki.ca, pki.server]) == [pki.ca]
    assert issuer_chain(leaf, [stranger.ca]) == []
