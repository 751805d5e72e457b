"""Length-prefixed framing: round trips under any chunking, limits enforced before the body."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztpki.errors import MalformedInput, PayloadTooLarge
from ztpki.protocol.enrollment import EnrollmentRequest, decode_request, encode_request
from ztpki.protocol.framing import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    FrameDecoder,
    encode_frame,
    frame_length,
)

FUZZ = settings(
    max_examples=int(os.environ.get("ZTPKI_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_ok_constants() -> None:
    assert MAX_FRAME_SIZE == 1048576
    assert HEADER_SIZE == 4


def test_ok_encode_frame_layout() -> None:
    assert encode_frame(b"<x/>") == b"\x00\x00\x00\x04<x/>"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_ok_single_frame_in_one_feed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"hello")) == [b"hello"]
    assert decoder.buffered == 0


def test_ok_several_frames_in_one_feed() -> None:
    decoder = FrameDecoder()
    data = b"".join(encode_frame(p) for p in (b"a", b"", b"ccc"))
    assert decoder.feed(data) == [b"a", b"", b"ccc"]


def test_ok_partial_frame_is_buffered() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"abcdef")
    assert decoder.feed(frame[:2]) == []
    assert decoder.buffered == 2
    assert decoder.feed(frame[2:7]) == []
    assert decoder.buffered == 7
    assert decoder.feed(frame[7:] + frame[:1]) == [b"abcdef"]
    assert decoder.buffered == 1
    assert decoder.feed(b"") == []


def test_ok_zero_length_frame_yields_empty_payload_that_xml_refuses() -> None:
    decoder = FrameDecoder()
    (payload,) = decoder.feed(encode_frame(b""))
    assert payload == b""
    with pytest.raises(MalformedInput, match="empty"):
        decode_request(payload)


def test_ok_request_through_frames() -> None:
    request = EnrollmentRequest(request_id="r1", device_id="d1")
    decoder = FrameDecoder()
    wire = encode_frame(encode_request(request)) * 2
    payloads = [p for byte in range(len(wire)) for p in decoder.feed(wire[byte : byte + 1])]
    assert [decode_request(p) for p in payloads] == [request, request]


@FUZZ
@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_ok_round_trip_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    received = [p for chunk in chunked(wire, cuts) for p in decoder.feed(chunk)]
    assert received == payloads
    assert decoder.buffered == 0


@FUZZ
@pytest.mark.fuzz
@given(st.lists(st.binary(max_size=64), max_size=30), st.integers(0, 2**32 - 1))
def test_fuzz_random_stream_only_typed_errors(chunks: list[bytes], max_size: int) -> None:
    decoder = FrameDecoder(max_size=max_size % 200)
    try:
        for chunk in chunks:
            for payload in decoder.feed(chunk):
                assert len(payload) <= max_size % 200
    except PayloadTooLarge:
        assert decoder.failure is not None
    if decoder.failure is not None:
        with pytest.raises(PayloadTooLarge):
            decoder.feed(b"")


def test_ok_frame_of_exactly_max_size() -> None:
    decoder = FrameDecoder(max_size=10)
    assert decoder.feed(encode_frame(b"x" * 10, max_size=10)) == [b"x" * 10]
    payload = b"x" * MAX_FRAME_SIZE
    assert FrameDecoder().feed(encode_frame(payload)) == [payload]


def test_fail_oversize_header_rejected_before_body() -> None:
    decoder = FrameDecoder()
    header = (MAX_FRAME_SIZE + 1).to_bytes(4, "big")
    assert decoder.feed(header[:3]) == []
    with pytest.raises(PayloadTooLarge, match="1048577 bytes exceeds the limit of 1048576"):
        decoder.feed(header[3:])  # no body byte has arrived
    with pytest.raises(PayloadTooLarge):
        decoder.feed(b"more")  # the stream is out of step for good


def test_fail_huge_header() -> None:
    with pytest.raises(PayloadTooLarge):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_fail_oversize_after_good_frame_in_same_chunk() -> None:
    decoder = FrameDecoder(max_size=8)
    # The frame ahead of the bad header is still delivered, with the failure noted ...
    assert decoder.feed(encode_frame(b"ok") + (9).to_bytes(4, "big") + b"body") == [b"ok"]
    assert isinstance(decoder.failure, PayloadTooLarge)
    # ... and from then on the stream is out of step.
    with pytest.raises(PayloadTooLarge, match="9 bytes exceeds the limit of 8"):
        decoder.feed(b"")
    with pytest.raises(PayloadTooLarge):
        decoder.feed(encode_frame(b"late"))


def test_ok_no_failure_on_a_good_stream() -> None:
    decoder = FrameDecoder(max_size=8)
    assert decoder.feed(encode_frame(b"ok") + (8).to_bytes(4, "big")) == [b"ok"]
    assert decoder.failure is None


def test_fail_custom_limit() -> None:
    decoder = FrameDecoder(max_size=4)
    assert decoder.feed(encode_frame(b"1234")) == [b"1234"]  # negative control
    with pytest.raises(PayloadTooLarge):
        decoder.feed(encode_frame(b"12345", max_size=5))


def test_fail_encode_frame_too_large() -> None:
    with pytest.raises(PayloadTooLarge):
        encode_frame(b"x" * (MAX_FRAME_SIZE + 1))
    with pytest.raises(PayloadTooLarge):
        encode_frame(b"abc", max_size=2)


@pytest.mark.parametrize(
    "max_size", [pytest.param(-1, id="fail-negative"), pytest.param(2**32, id="fail-above-header")]
)
def test_fail_decoder_limit_out_of_range(max_size: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_size=max_size)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(b"\x00\x00\x00\x00", 0, id="ok-zero"),
        pytest.param(b"\x00\x00\x01\x00", 256, id="ok-big-endian"),
        pytest.param(b"\x00\x10\x00\x00", MAX_FRAME_SIZE, id="ok-max"),
    ],
)
def test_ok_frame_length(header: bytes, expected: int) -> None:
    assert frame_length(header) == expected


def test_fail_frame_length() -> None:
    with pytest.raises(PayloadTooLarge):
        frame_length(b"\x00\x10\x00\x01")
    with pytest.raises(PayloadTooLarge):
        frame_length(b"\x00\x00\x00\x09", max_size=8)
    with pytest.raises(MalformedInput, match="4 bytes; got 3"):
        frame_length(b"\x00\x00\x01")
    with pytest.raises(MalformedInput):
        frame_length(b"\x00\x00\x00\x01\x00")
