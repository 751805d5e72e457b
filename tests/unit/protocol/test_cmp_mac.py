"""The MAC-based protection codec (ztpki.protocol.cmp.mac): PasswordBasedMac and PBMAC1
parameters both ways, the key derivation against RFC 4210's definition, and the policy that
refuses parameters before any key is derived."""

from __future__ import annotations

import contextlib
import hashlib
import os
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyasn1.codec.der import encoder
from pyasn1.type import univ
from pyasn1_alt_modules import rfc9480

from ztpki.protocol.cmp import (
    BadAlg,
    BadMessageCheck,
    CMPError,
    Header,
    PKIConfBody,
    decode_message,
)
from ztpki.protocol.cmp.mac import (
    PASSWORD_BASED_MAC,
    PBMAC1,
    MacParameters,
    MacPolicy,
    MacScheme,
    decode_mac_algorithm,
    encode_mac_algorithm,
    fresh,
    mac_key,
    mac_message,
    verify_mac,
)
from ztpki.protocol.cmp.messages import AlgorithmId

FUZZ = settings(
    max_examples=int(os.environ.get("ZTPKI_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_SHA2 = st.sampled_from([hashes.SHA256, hashes.SHA384, hashes.SHA512])
_MACS = st.sampled_from([hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512])
_pbm = st.builds(
    MacParameters,
    st.just(MacScheme.PASSWORD_BASED_MAC),
    salt=st.binary(min_size=0, max_size=128),
    iterations=st.integers(0, 2**40),
    owf=_SHA2,
    mac=_MACS,
)
_pbmac1 = st.builds(
    MacParameters,
    st.just(MacScheme.PBMAC1),
    salt=st.binary(min_size=1, max_size=64),
    iterations=st.integers(1, 2**40),
    owf=_SHA2,
    mac=_MACS,
    key_length=st.one_of(st.none(), st.integers(1, 128)),
)


def header() -> Header:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mac-1")])
    return Header(
        sender=name, recipient=x509.Name([]), transaction_id=os.urandom(16),
        sender_nonce=os.urandom(16), message_time=datetime.now(UTC), sender_kid=b"mac-1",
    )  # fmt: skip


@FUZZ
@given(params=st.one_of(_pbm, _pbmac1))
def test_ok_parameters_round_trip(params: MacParameters) -> None:
    algorithm = encode_mac_algorithm(params)
    assert algorithm.oid == (
        PASSWORD_BASED_MAC if params.scheme is MacScheme.PASSWORD_BASED_MAC else PBMAC1
    )
    assert decode_mac_algorithm(algorithm) == params
    assert encode_mac_algorithm(decode_mac_algorithm(algorithm)) == algorithm


@pytest.mark.fuzz
@FUZZ
@given(
    params=st.one_of(_pbm, _pbmac1),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_fail_mutated_parameters_raise_only_typed_errors(
    params: MacParameters, edits: list[tuple[int, int]]
) -> None:
    algorithm = encode_mac_algorithm(params)
    assert algorithm.parameters is not None
    data = bytearray(algorithm.parameters)
    for position, value in edits:
        data[position % len(data)] = value
    with contextlib.suppress(CMPError):
        decoded = decode_mac_algorithm(AlgorithmId(algorithm.oid, bytes(data)))
        with contextlib.suppress(BadAlg):
            MacPolicy().check(decoded)


@FUZZ
@given(secret=st.binary(min_size=1, max_size=40), salt=st.binary(min_size=8, max_size=32),
       iterations=st.integers(1, 300))  # fmt: skip
def test_ok_password_based_mac_key_is_rfc_4210s(
    secret: bytes, salt: bytes, iterations: int
) -> None:
    # RFC 4210 5.1.3.1: OWF applied iterationCount times, first to secret || salt.
    expected = hashlib.sha256(secret + salt).digest()
    for _ in range(iterations - 1):
        expected = hashlib.sha256(expected).digest()
    params = MacParameters(
        MacScheme.PASSWORD_BASED_MAC, salt, iterations, hashes.SHA256, hashes.SHA1
    )
    assert mac_key(params, secret) == expected


def test_ok_pbmac1_key_is_pbkdf2s() -> None:
    params = MacParameters(MacScheme.PBMAC1, b"s" * 16, 1000, hashes.SHA256, hashes.SHA256, 32)
    assert mac_key(params, b"secret") == hashlib.pbkdf2_hmac(
        "sha256", b"secret", b"s" * 16, 1000, 32
    )


@pytest.mark.parametrize("scheme", list(MacScheme))
def test_ok_message_verifies_with_its_secret_only(scheme: MacScheme) -> None:
    iterations = 500 if scheme is MacScheme.PASSWORD_BASED_MAC else 2000
    params = MacParameters(scheme, os.urandom(16), iterations, hashes.SHA256, hashes.SHA256)
    message = decode_message(mac_message(header(), PKIConfBody(), params, b"0123456789abcdef"))
    assert message.header.protection_alg is not None
    received = decode_mac_algorithm(message.header.protection_alg)
    verify_mac(message, received, b"0123456789abcdef", MacPolicy())
    with pytest.raises(BadMessageCheck, match="does not verify"):
        verify_mac(message, received, b"0123456789abcdeF", MacPolicy())
    # Any change to what was protected breaks it.
    tampered = message.protected_part.replace(b"mac-1", b"mac-2")
    forged = type(message)(message.header, message.body, message.protection, (), tampered)
    with pytest.raises(BadMessageCheck):
        verify_mac(forged, received, b"0123456789abcdef", MacPolicy())
    # An answer gets a new salt.
    assert fresh(received).salt != received.salt and len(fresh(received).salt) >= 16


@pytest.mark.parametrize(
    ("scheme", "iterations", "salt", "why"),
    [
        (MacScheme.PASSWORD_BASED_MAC, 2**40, 16, "iteration count"),
        (MacScheme.PASSWORD_BASED_MAC, 99, 16, "iteration count"),
        (MacScheme.PBMAC1, 10**9, 16, "iteration count"),
        (MacScheme.PBMAC1, 999, 16, "iteration count"),
        (MacScheme.PASSWORD_BASED_MAC, 500, 7, "salt has 7 bytes"),
    ],
)
def test_fail_parameters_outside_the_policy_before_any_derivation(
    scheme: MacScheme, iterations: int, salt: int, why: str
) -> None:
    params = MacParameters(scheme, os.urandom(salt), iterations, hashes.SHA256, hashes.SHA256)
    message = decode_message(
        mac_message(header(), PKIConfBody(), MacParameters(
            MacScheme.PASSWORD_BASED_MAC, os.urandom(16), 500, hashes.SHA256, hashes.SHA256
        ), b"0123456789abcdef")
    )  # fmt: skip
    # 2**40 iterations would never end: the refusal proves nothing was derived.
    with pytest.raises(BadAlg, match=why):
        verify_mac(message, params, b"0123456789abcdef", MacPolicy())


def test_fail_weak_or_unknown_algorithms() -> None:
    pbm = rfc9480.PBMParameter()
    pbm["salt"] = b"s" * 16
    pbm["owf"]["algorithm"] = univ.ObjectIdentifier("1.3.14.3.2.26")  # SHA-1
    pbm["iterationCount"] = 500
    pbm["mac"]["algorithm"] = univ.ObjectIdentifier("1.2.840.113549.2.9")
    with pytest.raises(BadAlg, match="one-way function"):
        decode_mac_algorithm(AlgorithmId(PASSWORD_BASED_MAC, encoder.encode(pbm)))
    with pytest.raises(BadAlg, match="not supported"):
        decode_mac_algorithm(AlgorithmId("1.2.840.113533.7.66.30", b"\x05\x00"))
