"""The pyasn1 layer (pki/asn1.py) and what is built on it: strict DER decoding, the PBES2
envelope of keys at rest, and the PKCS#8 shape check, as properties over many inputs."""

from __future__ import annotations

import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyasn1.type import univ
from pyasn1_alt_modules import rfc7030

from ztpki.errors import MalformedInput
from ztpki.pki.asn1 import decode_der, encode_der, oid, oid_text
from ztpki.pki.pbes2 import encrypt_pkcs8_der
from ztpki.protocol.csrattrs import csrattrs_der, oids_of_csrattrs

FUZZ = settings(
    max_examples=int(os.environ.get("ZTPKI_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_KEY = ec.generate_private_key(ec.SECP256R1())
_PLAIN = _KEY.private_bytes(
    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


@FUZZ
@given(
    passphrase=st.binary(min_size=1, max_size=64),
    rounds=st.integers(1, 50),
    extra=st.binary(max_size=40),
)
def test_ok_pbes2_envelope_opens_with_cryptography(
    passphrase: bytes, rounds: int, extra: bytes
) -> None:
    # Any payload length exercises the CBC padding; the key itself must load back unchanged.
    envelope = encrypt_pkcs8_der(_PLAIN, passphrase, rounds=rounds)
    loaded = serialization.load_der_private_key(envelope, password=passphrase)
    assert loaded.private_numbers() == _KEY.private_numbers()  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        serialization.load_der_private_key(envelope, password=passphrase + b"!")
    other = encrypt_pkcs8_der(_PLAIN + extra, passphrase, rounds=rounds)
    assert len(other) >= len(envelope)


def test_fail_pbes2_without_rounds() -> None:
    with pytest.raises(ValueError, match="at least one round"):
        encrypt_pkcs8_der(_PLAIN, b"x", rounds=0)


@FUZZ
@given(st.lists(st.integers(0, 2**64), min_size=1, max_size=8))
def test_ok_oid_round_trip(arcs: list[int]) -> None:
    dotted = ".".join(str(a) for a in [1, 3, *arcs])
    value = decode_der(encode_der(oid(dotted)), univ.ObjectIdentifier(), what="OID")
    assert oid_text(value) == dotted


@pytest.mark.fuzz
@FUZZ
@given(st.binary(max_size=256))
def test_ok_decode_der_accepts_only_its_own_encoding(der: bytes) -> None:
    """Whatever decode_der accepts encodes back to exactly the bytes it was given."""
    try:
        value = decode_der(der, rfc7030.CsrAttrs(), what="csrattrs body")
    except MalformedInput as exc:
        assert "csrattrs body" in exc.message
        assert "<" not in exc.message  # pyasn1's schema dumps stay out of errors
        return
    assert encode_der(value) == der
    assert oids_of_csrattrs(der) == [
        oid_text(e["oid"]) if e.getName() == "oid" else oid_text(e["attribute"]["attrType"])
        for e in value
    ]


@FUZZ
@given(st.lists(st.integers(1, 2**32), min_size=1, max_size=6))
def test_fail_long_form_length_is_not_der(arcs: list[int]) -> None:
    # The same value with its outer length in long form: BER a DER decoder must refuse.
    der = csrattrs_der([x509.ObjectIdentifier("1.3." + ".".join(map(str, arcs)))])
    assert der[1] < 0x80
    stretched = der[:1] + b"\x81" + der[1:]
    with pytest.raises(MalformedInput, match="csrattrs body"):
        oids_of_csrattrs(stretched)
