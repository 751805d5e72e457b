"""CMP's typed errors: each carries the PKIFailureInfo bit the answer to the sender names.

A handler that refuses raises one of these; the node turns it into an ``error`` body (or a
rejecting PKIStatusInfo inside ip/cp/kup/rp) with that bit and the message as statusString,
so the failInfo to answer with is decided where the refusal is, never guessed at the edge.
"""

from __future__ import annotations

from ztpki.errors import ZtpkiError
from ztpki.protocol.cmp.messages import FailInfo


class CMPError(ZtpkiError):
    """A CMP message or request the node refuses; ``fail_info`` is the bit to answer with."""

    code = "cmp"
    fail_info: FailInfo = FailInfo.BAD_REQUEST

    def __init__(self, message: str, *, fail_info: FailInfo | None = None) -> None:
        super().__init__(message)
        if fail_info is not None:
            self.fail_info = fail_info


class BadDataFormat(CMPError):
    """Bytes that are not a DER PKIMessage (or a body this profile does not read)."""

    code = "malformed"
    fail_info = FailInfo.BAD_DATA_FORMAT


class BadRequest(CMPError):
    """A well-formed message asking for something this node does not do."""

    fail_info = FailInfo.BAD_REQUEST


class BadMessageCheck(CMPError):
    """The protection is missing, of a refused kind, or does not verify."""

    fail_info = FailInfo.BAD_MESSAGE_CHECK


class BadAlg(CMPError):
    """A protection or POPO algorithm this node does not accept."""

    fail_info = FailInfo.BAD_ALG


class BadPOP(CMPError):
    """The proof of possession of the requested key does not verify."""

    fail_info = FailInfo.BAD_POP


class BadCertId(CMPError):
    """certConf names a certificate (hash or certReqId) that was not issued in this transaction."""

    fail_info = FailInfo.BAD_CERT_ID


class BadTime(CMPError):
    """messageTime too far from the node's clock."""

    fail_info = FailInfo.BAD_TIME


class TransactionIdInUse(CMPError):
    """The transactionID belongs to another transaction, open or finished."""

    fail_info = FailInfo.TRANSACTION_ID_IN_USE


class UnsupportedVersion(CMPError):
    """A pvno other than cmp2000 (2) or cmp2021 (3)."""

    fail_info = FailInfo.UNSUPPORTED_VERSION


class CMPNotAuthorized(CMPError):
    """Authenticated, but the register or policy refuses the request."""

    code = "not-authorized"
    fail_info = FailInfo.NOT_AUTHORIZED


class SystemUnavail(CMPError):
    """A dependency (the CA system, the database) cannot answer now."""

    code = "unavailable"
    fail_info = FailInfo.SYSTEM_UNAVAIL
