"""CMP messages (RFC 4210, RFC 9483 profile) as frozen dataclasses.

Wire names map to Python names explicitly (``BodyType``, ``FailInfo``). Certificates and
PKCS#10 requests stay DER bytes: the caller loads them with `cryptography` when it needs them.
Names in the header are directoryName GeneralNames (RFC 9483 section 3.1), held as x509.Name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

# Media type of a PKIMessage over HTTP (RFC 6712 section 3.4).
CMP_CONTENT_TYPE = "application/pkixcmp"

PVNO_CMP2000 = 2
PVNO_CMP2021 = 3


class BodyType(enum.Enum):
    """PKIBody choices this codec reads and writes, by their wire names."""

    IR = "ir"
    IP = "ip"
    CR = "cr"
    CP = "cp"
    P10CR = "p10cr"
    KUR = "kur"
    KUP = "kup"
    RR = "rr"
    RP = "rp"
    PKI_CONF = "pkiconf"
    GENM = "genm"
    GENP = "genp"
    ERROR = "error"
    CERT_CONF = "certConf"
    POLL_REQ = "pollReq"
    POLL_REP = "pollRep"


CERT_REQUEST_TYPES = frozenset({BodyType.IR, BodyType.CR, BodyType.KUR})
CERT_RESPONSE_TYPES = frozenset({BodyType.IP, BodyType.CP, BodyType.KUP})
# The answer to each certificate request body (RFC 4210 section 5.3).
RESPONSE_TO: dict[BodyType, BodyType] = {
    BodyType.IR: BodyType.IP,
    BodyType.CR: BodyType.CP,
    BodyType.P10CR: BodyType.CP,
    BodyType.KUR: BodyType.KUP,
}


class PKIStatus(enum.IntEnum):
    ACCEPTED = 0
    GRANTED_WITH_MODS = 1
    REJECTION = 2
    WAITING = 3
    REVOCATION_WARNING = 4
    REVOCATION_NOTIFICATION = 5
    KEY_UPDATE_WARNING = 6


class FailInfo(enum.IntEnum):
    """PKIFailureInfo bits (RFC 4210 section 5.2.3, RFC 9480)."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4
    BAD_DATA_FORMAT = 5
    WRONG_AUTHORITY = 6
    INCORRECT_DATA = 7
    MISSING_TIME_STAMP = 8
    BAD_POP = 9
    CERT_REVOKED = 10
    CERT_CONFIRMED = 11
    WRONG_INTEGRITY = 12
    BAD_RECIPIENT_NONCE = 13
    TIME_NOT_AVAILABLE = 14
    UNACCEPTED_POLICY = 15
    UNACCEPTED_EXTENSION = 16
    ADD_INFO_NOT_AVAILABLE = 17
    BAD_SENDER_NONCE = 18
    BAD_CERT_TEMPLATE = 19
    SIGNER_NOT_TRUSTED = 20
    TRANSACTION_ID_IN_USE = 21
    UNSUPPORTED_VERSION = 22
    NOT_AUTHORIZED = 23
    SYSTEM_UNAVAIL = 24
    SYSTEM_FAILURE = 25
    DUPLICATE_CERT_REQ = 26

    @property
    def wire_name(self) -> str:
        head, *rest = self.name.lower().split("_")
        return head + "".join(part.capitalize() for part in rest).replace("Pop", "POP")


@dataclass(frozen=True)
class AlgorithmId:
    """An AlgorithmIdentifier: dotted OID and the DER of its parameters (None: absent)."""

    oid: str
    parameters: bytes | None = None


@dataclass(frozen=True)
class StatusInfo:
    """PKIStatusInfo."""

    status: PKIStatus
    fail_info: frozenset[FailInfo] = frozenset()
    text: tuple[str, ...] = ()

    @classmethod
    def accepted(cls) -> StatusInfo:
        return cls(PKIStatus.ACCEPTED)

    @classmethod
    def rejection(cls, fail: FailInfo, text: str) -> StatusInfo:
        return cls(PKIStatus.REJECTION, frozenset({fail}), (text,))


@dataclass(frozen=True)
class InfoTypeAndValue:
    """One generalInfo / genm / genp entry: the OID and the DER of its value (None: absent)."""

    oid: str
    value: bytes | None = None


@dataclass(frozen=True)
class Header:
    """PKIHeader. Names are directoryNames; an empty x509.Name is the NULL-DN."""

    sender: x509.Name
    recipient: x509.Name
    transaction_id: bytes
    sender_nonce: bytes
    pvno: int = PVNO_CMP2000
    recip_nonce: bytes | None = None
    message_time: datetime | None = None
    protection_alg: AlgorithmId | None = None
    sender_kid: bytes | None = None
    recip_kid: bytes | None = None
    implicit_confirm: bool = False
    confirm_wait_time: datetime | None = None
    # generalInfo entries other than implicitConfirm and confirmWaitTime, as they came.
    general_info: tuple[InfoTypeAndValue, ...] = ()
    free_text: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProofOfPossession:
    """POPOSigningKey without poposkInput (RFC 4211 section 4.1, the profile's form):
    a signature over the DER of the CertRequest. ``ra_verified`` is the raVerified choice."""

    algorithm: AlgorithmId | None = None
    signature: bytes = b""
    ra_verified: bool = False


@dataclass(frozen=True)
class CertRequest:
    """One CertReqMsg of ir/cr/kur. ``der`` is the CertRequest as signed by the POPO."""

    cert_req_id: int
    subject: x509.Name | None = None
    issuer: x509.Name | None = None
    public_key_der: bytes | None = None  # SubjectPublicKeyInfo
    extensions_der: bytes | None = None  # Extensions
    # controls (RFC 4211 section 6), e.g. kur's oldCertID: type OID and DER of the value.
    controls: tuple[InfoTypeAndValue, ...] = ()
    popo: ProofOfPossession | None = None
    der: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class CertReqBody:
    """ir, cr or kur."""

    type: BodyType
    requests: tuple[CertRequest, ...]


@dataclass(frozen=True)
class P10crBody:
    csr_der: bytes
    type: BodyType = BodyType.P10CR


@dataclass(frozen=True)
class CertResponse:
    cert_req_id: int
    status: StatusInfo
    certificate_der: bytes | None = None


@dataclass(frozen=True)
class CertRepBody:
    """ip, cp or kup."""

    type: BodyType
    responses: tuple[CertResponse, ...]
    ca_pubs: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class CertStatus:
    cert_hash: bytes
    cert_req_id: int
    status: StatusInfo | None = None
    hash_alg: AlgorithmId | None = None


@dataclass(frozen=True)
class CertConfBody:
    statuses: tuple[CertStatus, ...]
    type: BodyType = BodyType.CERT_CONF


@dataclass(frozen=True)
class PKIConfBody:
    type: BodyType = BodyType.PKI_CONF


@dataclass(frozen=True)
class RevDetails:
    """The certificate an rr asks to revoke: its issuer and serial, and the CRL reason code."""

    issuer: x509.Name
    serial_number: int
    reason: x509.ReasonFlags | None = None


@dataclass(frozen=True)
class CertId:
    """A certificate by issuer and serial number (RFC 4211 CertId)."""

    issuer: x509.Name
    serial_number: int


@dataclass(frozen=True)
class RevReqBody:
    details: tuple[RevDetails, ...]
    type: BodyType = BodyType.RR


@dataclass(frozen=True)
class RevRepBody:
    statuses: tuple[StatusInfo, ...]
    rev_certs: tuple[CertId, ...] = ()
    type: BodyType = BodyType.RP


@dataclass(frozen=True)
class GenMsgBody:
    """genm or genp."""

    type: BodyType
    items: tuple[InfoTypeAndValue, ...]


@dataclass(frozen=True)
class PollReqBody:
    cert_req_ids: tuple[int, ...]
    type: BodyType = BodyType.POLL_REQ


@dataclass(frozen=True)
class PollEntry:
    cert_req_id: int
    check_after: int  # seconds
    reason: tuple[str, ...] = ()


@dataclass(frozen=True)
class PollRepBody:
    entries: tuple[PollEntry, ...]
    type: BodyType = BodyType.POLL_REP


@dataclass(frozen=True)
class ErrorBody:
    status: StatusInfo
    error_code: int | None = None
    details: tuple[str, ...] = ()
    type: BodyType = BodyType.ERROR


Body = (
    CertReqBody
    | P10crBody
    | CertRepBody
    | CertConfBody
    | PKIConfBody
    | RevReqBody
    | RevRepBody
    | GenMsgBody
    | PollReqBody
    | PollRepBody
    | ErrorBody
)


@dataclass(frozen=True)
class PKIMessage:
    """A decoded PKIMessage. ``protected_part`` is the DER its protection is computed over."""

    header: Header
    body: Body
    protection: bytes | None = None
    extra_certs: tuple[bytes, ...] = ()
    protected_part: bytes = field(default=b"", repr=False)
