"""Sans-I/O wire codecs: bytes in, frozen dataclasses out, typed errors; no sockets, no clock."""

from ztpki.protocol.enrollment import (
    NAMESPACE,
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentParameters,
    EnrollmentRequest,
    ErrorCode,
    InvalidEnrollmentMessage,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    request_id_of,
)
from ztpki.protocol.framing import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    FrameDecoder,
    encode_frame,
    frame_length,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME_SIZE",
    "NAMESPACE",
    "EnrollmentAnswer",
    "EnrollmentError",
    "EnrollmentParameters",
    "EnrollmentRequest",
    "ErrorCode",
    "FrameDecoder",
    "InvalidEnrollmentMessage",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_frame",
    "encode_request",
    "frame_length",
    "request_id_of",
]
