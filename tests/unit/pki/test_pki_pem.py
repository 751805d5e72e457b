"""Certificate loaders refuse what RFC 5280 forbids at the boundary, with a typed error."""

from __future__ import annotations

import base64
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from ztpki.errors import MalformedInput
from ztpki.pki.pem import base64_lines, load_certificate_der, load_certificates_pem, pem_armor


def _certificate(serial: int = 1) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_ok_positive_serial_loads() -> None:
    assert load_certificate_der(_certificate(1)).serial_number == 1


@pytest.mark.parametrize("serial_byte", [0x00, 0xFF], ids=["fail-zero", "fail-negative"])
def test_fail_non_positive_serial_is_malformed(serial_byte: int) -> None:
    der = bytearray(_certificate(1))
    at = der.find(b"\x02\x01\x01")  # INTEGER 1, the serial
    der[at + 2] = serial_byte
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der))
    pem += b"-----END CERTIFICATE-----\n"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns before it parses
        with pytest.raises(MalformedInput):
            load_certificate_der(bytes(der))
        with pytest.raises(MalformedInput):
            load_certificates_pem(pem)


def test_fail_subject_attribute_of_the_wrong_asn1_type_is_malformed() -> None:
    # CN re-typed as a BIT STRING: cryptography raises TypeError when the subject is decoded
    # (found by the attack suite's certificate fuzzer; it used to escape as an HTTP 500).
    der = _certificate()
    assert b"\x0c\x06device" in der
    bad = der.replace(b"\x0c\x06device", b"\x03\x06\x00evice")
    with pytest.raises(MalformedInput):
        load_certificate_der(bad)


@given(st.binary(min_size=1, max_size=400), st.sampled_from([b"\n", b"\r\n"]))
def test_ok_base64_lines_round_trip_in_lines_of_64(der: bytes, newline: bytes) -> None:
    text = base64_lines(der, newline=newline)
    lines = text.split(newline)
    assert lines[-1] == b"" and all(0 < len(line) <= 64 for line in lines[:-1])
    assert base64.b64decode(b"".join(lines)) == der


@given(st.binary(min_size=1, max_size=400))
def test_ok_pem_armor_round_trips(der: bytes) -> None:
    text = pem_armor("TEST BLOCK", der).decode("ascii")
    assert text.startswith("-----BEGIN TEST BLOCK-----\n")
    assert text.endswith("-----END TEST BLOCK-----\n")
    body = text.removeprefix("-----BEGIN TEST BLOCK-----\n").removesuffix(
        "-----END TEST BLOCK-----\n"
    )
    assert base64.b64decode(body) == der
