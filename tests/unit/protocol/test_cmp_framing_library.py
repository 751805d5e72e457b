"""The hand-framed parts of the CMP codec against pyasn1 reading the same bytes.

The codec frames the PKIMessage, its header and its tail (protection, extraCerts) by hand
for speed (protocol/cmp/header.py, tlv.py); the bodies go through pyasn1. These tests hold
the hand framing to the library: every message the codec writes is DER that pyasn1-alt-modules'
own RFC 9480 PKIMessage reads and writes back to the same bytes, and no message the codec
accepts is one that pyasn1 refuses or reads differently. Being stricter than the library is
allowed (minimal lengths, the profile's bodies); being more lenient is a bug.

One difference is the library's: pyasn1 0.6 writes a negative INTEGER whose minimal form
starts with 0x80 one octet too long (-128 as ff 80, X.690 8.3.2 says 80). The codec writes
the minimal form; the round trip below compares meaning, and pins that difference.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_alt_modules import rfc9480
from tests.unit.protocol.test_cmp_codec import (
    CUTS,
    EDITS,
    FUZZ,
    _bodies,
    _certs,
    _headers,
    mutated_openssl_message,
    openssl_messages,
)

from ztpki.protocol.cmp import CMPError, Header, decode_message, encode_message
from ztpki.protocol.cmp import asn1 as cmp_asn1


def _library(data: bytes, spec: Any) -> Any:
    value, rest = decoder.decode(data, asn1Spec=spec)
    assert rest == b"", "pyasn1 left bytes over"
    return value


def _octets(header: Any, field: str) -> bytes | None:
    value = header[field]
    return bytes(value) if value.isValue else None


def _agrees(header: Header, library: Any) -> None:
    """What the codec read from the header is what pyasn1 reads from it."""
    assert int(library["pvno"]) == header.pvno
    assert _octets(library, "transactionID") == header.transaction_id
    assert _octets(library, "senderNonce") == header.sender_nonce
    assert _octets(library, "recipNonce") == header.recip_nonce
    assert _octets(library, "senderKID") == header.sender_kid
    assert library["messageTime"].isValue == (header.message_time is not None)


@pytest.mark.parametrize("name", sorted(openssl_messages()[1]))
def test_ok_openssl_message_reads_the_same_through_pyasn1(name: str) -> None:
    data = openssl_messages()[1][name]
    message = decode_message(data)
    library = _library(data, rfc9480.PKIMessage())
    assert encoder.encode(library) == data
    _agrees(message.header, library["header"])
    assert library["body"].getName() == message.body.type.value
    extra = library["extraCerts"]
    assert (len(extra) if extra.isValue else 0) == len(message.extra_certs)


@pytest.mark.fuzz
@FUZZ
@given(
    header=_headers,
    body=_bodies,
    protection=st.one_of(st.none(), st.binary(min_size=1, max_size=40)),
    extra=_certs,
)
def test_ok_every_message_the_codec_writes_is_der_pyasn1_writes_back_alike(
    header: Header, body: object, protection: bytes | None, extra: tuple[bytes, ...]
) -> None:
    data = encode_message(header, body, protection=protection, extra_certs=extra)  # type: ignore[arg-type]
    library = _library(data, rfc9480.PKIMessage())
    _agrees(header, library["header"])
    assert library["body"].getName() == body.type.value  # type: ignore[attr-defined]
    # What pyasn1 writes back means the same: the codec reads it to the same message.
    again = decode_message(encoder.encode(library))
    assert again.header == header and again.protection == protection
    assert (_octets(library, "protection") is not None) == (protection is not None)


def test_ok_the_codec_writes_minimal_integers_where_pyasn1_does_not() -> None:
    from ztpki.protocol.cmp.header import integer

    assert encoder.encode(univ.Integer(-128)) == bytes.fromhex("0202ff80")  # pyasn1's
    assert integer(-128) == bytes.fromhex("020180")  # X.690 8.3.2


@pytest.mark.fuzz
@FUZZ
@given(
    name=st.sampled_from(sorted(openssl_messages()[1])),
    edits=EDITS,
    cut=CUTS,
)
def test_fail_nothing_the_library_refuses_is_accepted_by_the_hand_framing(
    name: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    mutated = mutated_openssl_message(name, edits, cut)
    try:
        message = decode_message(mutated)
    except CMPError:
        return
    # Accepted: the library's schema (certificates opaque, as the codec keeps them) must read
    # the very same bytes as one whole PKIMessage, and say the same of its header.
    try:
        library = _library(mutated, cmp_asn1.PKIMessage())
    except PyAsn1Error as exc:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"the codec accepted bytes pyasn1 refuses: {exc}")
    _agrees(message.header, library["header"])
    assert encoder.encode(library) == mutated
