"""Length-prefixed framing of enrollment messages on a TCP/TLS stream, sans I/O.

A frame is a 4-byte unsigned big-endian length followed by that many bytes of payload
(UTF-8 XML). Several frames may follow each other on one connection. A zero-length frame
is legal framing: it is handed on as ``b""`` and the XML decoder rejects it as malformed,
so the peer gets an error answer instead of a dropped connection.
"""

from __future__ import annotations

from ztpki.errors import MalformedInput, PayloadTooLarge

MAX_FRAME_SIZE = 1 << 20
HEADER_SIZE = 4

__all__ = ["HEADER_SIZE", "MAX_FRAME_SIZE", "FrameDecoder", "encode_frame", "frame_length"]


def _too_large(length: int, max_size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"frame of {length} bytes exceeds the limit of {max_size} bytes; "
        "send one enrollment message per frame"
    )


def encode_frame(payload: bytes, *, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """The frame carrying ``payload``; PayloadTooLarge when it exceeds ``max_size``."""
    if len(payload) > max_size:
        raise _too_large(len(payload), max_size)
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


def frame_length(header: bytes, *, max_size: int = MAX_FRAME_SIZE) -> int:
    """The payload length a 4-byte header announces, for stream readers at the edge.

    MalformedInput when ``header`` is not 4 bytes; PayloadTooLarge when the length exceeds
    ``max_size``, so the reader can refuse before reading the body.
    """
    if len(header) != HEADER_SIZE:
        raise MalformedInput(
            f"frame header must be {HEADER_SIZE} bytes; got {len(header)} (stream ended early?)"
        )
    length = int.from_bytes(header, "big")
    if length > max_size:
        raise _too_large(length, max_size)
    return length


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get complete payloads back.

    A header that announces more than ``max_size`` puts the stream out of step before its
    body arrives: the frames ahead of it are still returned (``failure`` is then set), and
    the first call with none of them left raises PayloadTooLarge, as does every later call.
    The caller answers what came ahead, then closes the connection (after sending an error
    answer, if it wants to).
    """

    def __init__(self, *, max_size: int = MAX_FRAME_SIZE) -> None:
        if not 0 <= max_size < 1 << 32:
            raise ValueError(f"max_size must be between 0 and 2**32 - 1, not {max_size}")
        self._max_size = max_size
        self._buffer = bytearray()
        self._failure: PayloadTooLarge | None = None

    @property
    def failure(self) -> PayloadTooLarge | None:
        """The error of a header over the limit, once one arrived."""
        return self._failure

    @property
    def buffered(self) -> int:
        """Bytes received (headers included) that are not yet part of a returned payload."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data``, in order (often none, sometimes several)."""
        if self._failure is not None:
            raise self._failure
        buffer = self._buffer
        buffer += data
        payloads: list[bytes] = []
        start = 0
        try:
            while len(buffer) - start >= HEADER_SIZE:
                length = frame_length(
                    bytes(buffer[start : start + HEADER_SIZE]), max_size=self._max_size
                )
                end = start + HEADER_SIZE + length
                if len(buffer) < end:
                    break
                payloads.append(bytes(buffer[start + HEADER_SIZE : end]))
                start = end
        except PayloadTooLarge as exc:
            self._failure = exc
            if not payloads:
                raise
        finally:
            # One deletion per call keeps many small frames in one chunk linear.
            del buffer[:start]
        return payloads
