"""EST (RFC 7030) body codec: properties, refusals, and interop with the real openssl binary."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztpki.errors import MalformedInput, PayloadTooLarge
from ztpki.protocol.est import (
    CSR_TYPE,
    MAX_BODY,
    ServerKeygenResponse,
    UnsupportedMediaType,
    build_csr,
    check_content_type,
    csr_device_id,
    decode_base64_body,
    decode_certs_only,
    decode_csr,
    decode_csrattrs,
    decode_serverkeygen,
    encode_certs_only,
    encode_csr,
    encode_csrattrs,
    encode_serverkeygen,
    spki_sha256,
)

SPLIT_SCRIPT = Path("/work/shared/interop/est_split_multipart.py")
FUZZ = settings(
    max_examples=int(os.environ.get("ZTPKI_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not found")
ECDSA_SHA256 = ObjectIdentifier("1.2.840.10045.4.3.2")
EC_PUBLIC_KEY = ObjectIdentifier("1.2.840.10045.2.1")
SECP256R1 = ObjectIdentifier("1.2.840.10045.3.1.7")
CHALLENGE_PASSWORD = ObjectIdentifier("1.2.840.113549.1.9.7")


# --- fixtures built once per process (hypothesis forbids function-scoped fixtures) -------


@cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def pkcs8(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@cache
def certificate(name: str) -> x509.Certificate:
    key = ec_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2035, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )


@cache
def fuzz_csr_der() -> bytes:
    # Built once: ECDSA signatures vary in length, and hypothesis needs stable draws.
    return csr_der(build_csr(ec_key(), device_id="DEV-FUZZ"))


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


def b64(der: bytes) -> bytes:
    return base64.b64encode(der)


def csr_with_subject(*attributes: tuple[ObjectIdentifier, str]) -> x509.CertificateSigningRequest:
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    return (
        x509.CertificateSigningRequestBuilder().subject_name(name).sign(ec_key(), hashes.SHA256())
    )


def run(args: list[str], data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=data, capture_output=True, check=False, timeout=60)


# --- base64 bodies ------------------------------------------------------------------------


@st.composite
def wrapped_base64(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(data, its base64 with arbitrary CRLF/LF/space/tab breaks inserted anywhere)."""
    data = draw(st.binary(min_size=1, max_size=600))
    text = b64(data)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=20)))
    pieces, last = [], 0
    for cut in cuts:
        pieces += [text[last:cut], draw(st.sampled_from([b"\r\n", b"\n", b" ", b"\t", b"\r\n "]))]
        last = cut
    pieces.append(text[last:])
    return data, b"".join(pieces)


@FUZZ
@given(wrapped_base64())
def test_ok_base64_round_trip_with_any_line_breaks(case: tuple[bytes, bytes]) -> None:
    data, body = case
    assert decode_base64_body(body) == data


@pytest.mark.fuzz
@FUZZ
@given(st.binary(max_size=2048), st.integers(1, 4096))
def test_fail_base64_arbitrary_bytes_raise_only_typed_errors(body: bytes, limit: int) -> None:
    try:
        decoded = decode_base64_body(body, limit=limit)
    except (MalformedInput, PayloadTooLarge):
        return
    assert b64(decoded) == body.translate(None, b" \t\r\n")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"", "empty", id="fail-empty"),
        pytest.param(b" \r\n\t", "empty", id="fail-whitespace-only"),
        pytest.param(b"-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n", "PEM", id="fail-pem"),
        pytest.param(b"QUJD@A==", "alphabet", id="fail-outside-alphabet"),
        pytest.param(b"QUJD\x00", "alphabet", id="fail-nul-byte"),
        pytest.param(b"QQ==QUJD", "misplaced", id="fail-padding-in-middle"),
        pytest.param(b"QUJDRA", "multiple of 4", id="fail-missing-padding"),
        pytest.param(b"QUJD=", "multiple of 4", id="fail-excess-padding"),
        pytest.param(b"Q===", "misplaced or too long", id="fail-three-pads"),
        pytest.param(b"QR==", "canonical", id="fail-non-canonical-bits"),
        pytest.param(b"QUI=QQ==", "misplaced", id="fail-two-padded-groups"),
    ],
)
def test_fail_base64_refusals_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedInput, match=reason) as caught:
        decode_base64_body(body)
    assert caught.value.code == "malformed"


def test_ok_base64_at_limit_and_fail_above() -> None:
    body = b64(b"\x01" * 30)  # 40 characters
    assert decode_base64_body(body, limit=40) == b"\x01" * 30
    with pytest.raises(PayloadTooLarge) as caught:
        decode_base64_body(body, limit=39)
    assert caught.value.code == "too-large"


def test_fail_base64_default_limit_is_max_body() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_base64_body(b"A" * (MAX_BODY + 4))


# --- Content-Type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("application/pkcs10", id="ok-exact"),
        pytest.param("Application/PKCS10", id="ok-case-insensitive"),
        pytest.param(" application/pkcs10 ; charset=us-ascii", id="ok-parameters-ignored"),
    ],
)
def test_ok_content_type(header: str) -> None:
    check_content_type(header, CSR_TYPE)


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        pytest.param(None, "got none", id="fail-missing"),
        pytest.param("  ", "got none", id="fail-blank"),
        pytest.param("application/x-www-form-urlencoded", "x-www-form", id="fail-form"),
        pytest.param("application/pkcs10x", "pkcs10x", id="fail-prefix-only"),
        pytest.param("text/plain; application/pkcs10", "text/plain", id="fail-type-in-param"),
    ],
)
def test_fail_content_type_is_415(header: str | None, shown: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=shown) as caught:
        check_content_type(header, CSR_TYPE)
    assert isinstance(caught.value, MalformedInput)
    assert caught.value.code == "unsupported-media-type"
    assert "expected Content-Type application/pkcs10" in caught.value.message


def test_ok_content_type_certs_only_ignores_smime_parameter() -> None:
    check_content_type("application/pkcs7-mime", "application/pkcs7-mime; smime-type=certs-only")


# --- PKCS#10 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(ec_key, id="ok-ec"),
        pytest.param(rsa_key, id="ok-rsa"),
        pytest.param(ed_key, id="ok-ed25519"),
    ],
)
def test_ok_build_encode_decode_csr(key: object) -> None:
    private_key = key()  # type: ignore[operator]
    csr = build_csr(private_key, device_id="DEV-0042")
    body = encode_csr(csr)
    assert all(len(line) <= 64 for line in body.split(b"\n"))
    assert b"\r" not in body
    decoded = decode_csr(body, content_type="application/pkcs10")
    assert csr_der(decoded) == csr_der(csr)
    assert csr_device_id(decoded) == "DEV-0042"
    assert spki_sha256(decoded.public_key()) == spki_sha256(private_key.public_key())


def test_ok_decode_csr_binary_transfer_encoding_and_control() -> None:
    der = csr_der(build_csr(ec_key(), device_id="DEV-1"))
    csr = decode_csr(der, content_type=CSR_TYPE, transfer_encoding="Binary")
    assert csr_der(csr) == der
    with pytest.raises(MalformedInput, match="not base64"):
        decode_csr(der, content_type=CSR_TYPE)  # raw DER needs the header


def flip_last_byte(der: bytes) -> bytes:
    # The signature BIT STRING ends the CSR: its last byte is signature, never structure.
    return der[:-1] + bytes([der[-1] ^ 0x01])


@pytest.mark.parametrize(
    ("body", "kwargs", "error", "reason"),
    [
        pytest.param(b"not base64!", {}, MalformedInput, "alphabet", id="fail-bad-base64"),
        pytest.param(
            b64(certificate("not-a-csr").public_bytes(serialization.Encoding.DER)),
            {},
            MalformedInput,
            "not a DER PKCS#10",
            id="fail-certificate-not-csr",
        ),
        pytest.param(
            b64(b"\x30\x03\x02\x01\x00"),
            {},
            MalformedInput,
            "not a DER PKCS#10",
            id="fail-other-der",
        ),
        pytest.param(
            b64(csr_der(build_csr(ec_key(), device_id="D")) + b"\x00"),
            {},
            MalformedInput,
            "not a DER PKCS#10",
            id="fail-trailing-byte",
        ),
        pytest.param(
            b64(flip_last_byte(csr_der(build_csr(ec_key(), device_id="D")))),
            {},
            MalformedInput,
            "signature does not verify",
            id="fail-ec-signature-flipped",
        ),
        pytest.param(
            b64(flip_last_byte(csr_der(build_csr(ed_key(), device_id="D")))),
            {},
            MalformedInput,
            "signature does not verify",
            id="fail-ed25519-signature-flipped",
        ),
        pytest.param(
            encode_csr(build_csr(ec_key(), device_id="D")),
            {"content_type": "application/pkcs7-mime"},
            UnsupportedMediaType,
            "expected Content-Type application/pkcs10",
            id="fail-wrong-content-type",
        ),
        pytest.param(
            encode_csr(build_csr(ec_key(), device_id="D")),
            {"content_type": None},
            UnsupportedMediaType,
            "got none",
            id="fail-missing-content-type",
        ),
        pytest.param(
            encode_csr(build_csr(ec_key(), device_id="D")),
            {"transfer_encoding": "quoted-printable"},
            MalformedInput,
            "not supported; use base64",
            id="fail-unknown-transfer-encoding",
        ),
        pytest.param(
            encode_csr(build_csr(ec_key(), device_id="D")),
            {"limit": 100},
            PayloadTooLarge,
            "limit is 100",
            id="fail-too-large",
        ),
        pytest.param(
            b"A" * 200,
            {"transfer_encoding": "binary", "limit": 100},
            PayloadTooLarge,
            "limit",
            id="fail-too-large-binary",
        ),
        pytest.param(
            b"", {"transfer_encoding": "binary"}, MalformedInput, "empty", id="fail-empty-binary"
        ),
    ],
)
def test_fail_decode_csr(
    body: bytes, kwargs: dict[str, object], error: type[Exception], reason: str
) -> None:
    arguments: dict[str, object] = {"content_type": CSR_TYPE, **kwargs}
    with pytest.raises(error, match=reason):
        decode_csr(body, **arguments)  # type: ignore[arg-type]


def test_ok_unflipped_signature_control() -> None:
    der = csr_der(build_csr(ec_key(), device_id="D"))
    assert csr_der(decode_csr(b64(der), content_type=CSR_TYPE)) == der


@pytest.mark.fuzz
@FUZZ
@given(st.data())
def test_fail_decode_csr_mutations_raise_only_typed_errors(data: st.DataObject) -> None:
    der = bytearray(fuzz_csr_der())
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(der)))
    try:
        csr = decode_csr(b64(bytes(der[:cut])), content_type=CSR_TYPE)
    except MalformedInput:
        return
    assert csr.is_signature_valid


@pytest.mark.fuzz
@FUZZ
@given(st.binary(max_size=1024), st.sampled_from([None, "base64", "binary"]))
def test_fail_decode_csr_arbitrary_bytes(body: bytes, encoding: str | None) -> None:
    with pytest.raises((MalformedInput, PayloadTooLarge)):
        decode_csr(body, content_type=CSR_TYPE, transfer_encoding=encoding)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        pytest.param(
            [(NameOID.COMMON_NAME, "cn-1"), (NameOID.SERIAL_NUMBER, "sn-1")],
            "sn-1",
            id="ok-serial-number-wins",
        ),
        pytest.param([(NameOID.COMMON_NAME, "cn-1")], "cn-1", id="ok-common-name-only"),
        pytest.param([(NameOID.ORGANIZATION_NAME, "Acme")], None, id="ok-none-without-names"),
        pytest.param([], None, id="ok-none-empty-subject"),
        pytest.param(
            [(NameOID.SERIAL_NUMBER, "sn-1"), (NameOID.SERIAL_NUMBER, "sn-1")],
            "sn-1",
            id="ok-repeated-same-serial",
        ),
    ],
)
def test_csr_device_id(
    attributes: list[tuple[ObjectIdentifier, str]], expected: str | None
) -> None:
    assert csr_device_id(csr_with_subject(*attributes)) == expected


def test_fail_csr_device_id_ambiguous_serial_number() -> None:
    csr = csr_with_subject((NameOID.SERIAL_NUMBER, "sn-1"), (NameOID.SERIAL_NUMBER, "sn-2"))
    with pytest.raises(MalformedInput, match="2 different serialNumber"):
        csr_device_id(csr)


def test_spki_sha256_same_key_same_digest_other_key_differs() -> None:
    spki = (
        ec_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert spki_sha256(ec_key().public_key()) == hashlib.sha256(spki).hexdigest()
    assert spki_sha256(build_csr(ec_key(), device_id="x").public_key()) == spki_sha256(
        ec_key().public_key()
    )
    assert spki_sha256(ed_key().public_key()) != spki_sha256(ec_key().public_key())


def test_fail_build_csr_empty_device_id() -> None:
    with pytest.raises(ValueError, match="device_id"):
        build_csr(ec_key(), device_id="")


# --- certs-only PKCS#7 ---------------------------------------------------------------------


def test_ok_certs_only_round_trip_keeps_order_and_line_shape() -> None:
    certs = [certificate("leaf"), certificate("issuer")]
    body = encode_certs_only(certs)
    lines = body.split(b"\n")
    assert lines[-1] == b"" and all(0 < len(line) <= 64 for line in lines[:-1])
    assert b"\r" not in body
    assert decode_certs_only(body) == certs
    assert decode_certs_only(body.replace(b"\n", b"\r\n")) == certs


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(b"", MalformedInput, id="fail-empty"),
        pytest.param(b64(b"\x30\x00"), MalformedInput, id="fail-empty-sequence"),
        pytest.param(
            encode_csr(build_csr(ec_key(), device_id="D")), MalformedInput, id="fail-csr-not-pkcs7"
        ),
        pytest.param(b"A" * (MAX_BODY + 1), PayloadTooLarge, id="fail-too-large"),
    ],
)
def test_fail_decode_certs_only(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_certs_only(body)


def test_fail_encode_certs_only_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="at least one"):
        encode_certs_only([])


@pytest.mark.fuzz
@FUZZ
@given(st.binary(max_size=1024))
def test_fail_decode_certs_only_arbitrary_der(der: bytes) -> None:
    try:
        decode_certs_only(b64(der))
    except MalformedInput:
        return


# --- serverkeygen multipart ----------------------------------------------------------------


def skg(boundary: str = "b0undary") -> tuple[str, bytes]:
    return encode_serverkeygen(
        private_key_der=pkcs8(ec_key()), certificate=certificate("device"), boundary=boundary
    )


def test_ok_serverkeygen_round_trip_and_shape() -> None:
    content_type, body = encode_serverkeygen(
        private_key_der=pkcs8(ec_key()), certificate=certificate("device")
    )
    assert content_type.startswith("multipart/mixed; boundary=est-")
    assert b"\n" not in body.replace(b"\r\n", b"")  # CRLF only
    assert b"Content-Type: application/pkcs8\r\n" in body
    assert b"Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n" in body
    assert body.count(b"Content-Transfer-Encoding: base64\r\n") == 2
    assert body.index(b"application/pkcs8") < body.index(b"application/pkcs7-mime")
    answer = decode_serverkeygen(content_type, body)
    assert answer.private_key_der == pkcs8(ec_key())
    assert answer.certificates == (certificate("device"),)


def test_ok_serverkeygen_boundaries_are_random() -> None:
    first, _ = encode_serverkeygen(
        private_key_der=pkcs8(ec_key()), certificate=certificate("device")
    )
    second, _ = encode_serverkeygen(
        private_key_der=pkcs8(ec_key()), certificate=certificate("device")
    )
    assert first != second


def test_ok_serverkeygen_repr_hides_the_key() -> None:
    answer = decode_serverkeygen(*skg())
    assert "private_key_der" not in repr(answer)
    assert answer.private_key_der.hex() not in repr(answer)


boundaries = st.text(
    alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz()+_,./:=?-",
    min_size=1,
    max_size=70,
)


@FUZZ
@given(
    boundary=boundaries,
    key=st.sampled_from([ec_key, ed_key, rsa_key]),
    name=st.sampled_from(["device", "other"]),
    line_end=st.sampled_from([b"\r\n", b"\n"]),
)
def test_ok_serverkeygen_round_trip_property(
    boundary: str, key: object, name: str, line_end: bytes
) -> None:
    key_der = pkcs8(key())  # type: ignore[operator]
    content_type, body = encode_serverkeygen(
        private_key_der=key_der, certificate=certificate(name), boundary=boundary
    )
    answer = decode_serverkeygen(content_type, body.replace(b"\r\n", line_end))
    assert answer == ServerKeygenResponse(
        private_key_der=key_der, certificates=(certificate(name),)
    )
    quoted = f'multipart/mixed; boundary="{boundary}"'  # senders may always quote
    assert decode_serverkeygen(quoted, body) == answer


def test_ok_serverkeygen_parts_in_either_order() -> None:
    content_type, body = skg()
    _, key_part, cert_part, _ = body.split(b"--b0undary")
    swapped = b"--b0undary" + cert_part + b"--b0undary" + key_part + b"--b0undary--\r\n"
    assert decode_serverkeygen(content_type, swapped) == decode_serverkeygen(content_type, body)


def without_close(body: bytes) -> bytes:
    return body.replace(b"--b0undary--\r\n", b"")


def key_part_only(body: bytes) -> bytes:
    head, _, _ = body.partition(b"--b0undary\r\nContent-Type: application/pkcs7-mime")
    return head + b"--b0undary--\r\n"


def duplicate_key_part(body: bytes) -> bytes:
    key_part = body.split(b"--b0undary")[1]
    return b"--b0undary" + key_part + body


def truncate_key_der(body: bytes) -> bytes:
    key_der = pkcs8(ec_key())
    return body.replace(b64(key_der)[:64], b64(key_der[:30])[:40], 1)


@pytest.mark.parametrize(
    ("content_type", "mutate", "error", "reason"),
    [
        pytest.param(
            "application/pkcs8",
            None,
            UnsupportedMediaType,
            "expected Content-Type multipart/mixed",
            id="fail-wrong-type",
        ),
        pytest.param("multipart/mixed", None, MalformedInput, "no boundary", id="fail-no-boundary"),
        pytest.param(
            "multipart/mixed; boundary=other",
            None,
            MalformedInput,
            "not a complete",
            id="fail-wrong-boundary",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary\r\nX: y",
            None,
            MalformedInput,
            "line break",
            id="fail-header-injection",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            without_close,
            MalformedInput,
            "not closed",
            id="fail-truncated",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            key_part_only,
            MalformedInput,
            "found: application/pkcs8$",
            id="fail-cert-part-missing",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            duplicate_key_part,
            MalformedInput,
            "one application/pkcs8",
            id="fail-duplicate-key-part",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            lambda b: b.replace(b"Transfer-Encoding: base64", b"Transfer-Encoding: binary", 1),
            MalformedInput,
            "expected base64",
            id="fail-binary-part",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            lambda b: b.replace(b"smime-type=certs-only", b"smime-type=server-generated-key"),
            MalformedInput,
            "encrypted server-generated keys",
            id="fail-encrypted-key-variant",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            lambda b: b.replace(b"base64\r\n\r\n", b"base64\r\n\r\n!!!!", 1),
            MalformedInput,
            "private key part: body is not base64",
            id="fail-garbage-base64-in-key-part",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            truncate_key_der,
            MalformedInput,
            "not a DER PKCS#8",
            id="fail-key-not-pkcs8",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            lambda b: b.replace(
                b"application/pkcs8", b"application/pkcs7-mime; smime-type=certs-only"
            ),
            MalformedInput,
            "found: application/pkcs7-mime, application/pkcs7-mime",
            id="fail-two-cert-parts",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            lambda b: b + b"x" * MAX_BODY,
            PayloadTooLarge,
            "limit",
            id="fail-too-large",
        ),
        pytest.param(
            "multipart/mixed; boundary=b0undary",
            lambda b: b.replace(b"\r\n\r\nMI", b"\r\n\r\n\xc3\xa9MI", 1),
            MalformedInput,
            "non-ASCII",
            id="fail-non-ascii-in-part",
        ),
    ],
)
def test_fail_decode_serverkeygen(
    content_type: str, mutate: object, error: type[Exception], reason: str
) -> None:
    _, body = skg()
    if mutate is not None:
        body = mutate(body)  # type: ignore[operator]
    with pytest.raises(error, match=reason):
        decode_serverkeygen(content_type, body)


def test_ok_decode_serverkeygen_control_for_refusals() -> None:
    content_type, body = skg()
    assert content_type == "multipart/mixed; boundary=b0undary"
    assert decode_serverkeygen(content_type, body).certificates == (certificate("device"),)


@pytest.mark.fuzz
@FUZZ
@given(
    st.one_of(
        st.text(max_size=120), st.text(max_size=80).map("multipart/mixed; boundary={}".format)
    ),
    st.binary(max_size=2048),
)
def test_fail_decode_serverkeygen_garbage(content_type: str, body: bytes) -> None:
    try:
        decode_serverkeygen(content_type, body)
    except (MalformedInput, PayloadTooLarge):
        return
    raise AssertionError("garbage decoded")


@pytest.mark.fuzz
@FUZZ
@given(st.data())
def test_fail_decode_serverkeygen_mutations_raise_only_typed_errors(data: st.DataObject) -> None:
    content_type, original = skg()
    body = bytearray(original)
    for _ in range(data.draw(st.integers(1, 6))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(
            st.sampled_from(b"-\r\n:;= AZaz09+/\x00\xff")
        )
    cut = data.draw(st.integers(0, len(body)))
    try:
        answer = decode_serverkeygen(content_type, bytes(body[:cut]))
    except (MalformedInput, PayloadTooLarge):
        return
    assert answer.certificates


@needs_openssl
def test_ok_serverkeygen_interop_split_script_and_openssl(tmp_path: Path) -> None:
    content_type, body = encode_serverkeygen(
        private_key_der=pkcs8(ec_key()), certificate=certificate("device")
    )
    (tmp_path / "skg.body").write_bytes(body)
    split = run(
        [
            sys.executable,
            str(SPLIT_SCRIPT),
            content_type,
            str(tmp_path / "skg.body"),
            str(tmp_path / "out"),
        ]
    )
    assert split.returncode == 0, split.stderr
    key_der = (tmp_path / "out" / "key.der").read_bytes()
    assert key_der == pkcs8(ec_key())
    pkey = run(
        ["openssl", "pkey", "-inform", "DER", "-in", str(tmp_path / "out" / "key.der"), "-noout"]
    )
    assert pkey.returncode == 0, pkey.stderr
    p7 = run(
        [
            "openssl",
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "out" / "cert.p7.der"),
            "-print_certs",
        ]
    )
    assert p7.returncode == 0, p7.stderr
    assert b"CN = device" in p7.stdout or b"CN=device" in p7.stdout
    pem = x509.load_pem_x509_certificates(p7.stdout)
    assert pem == [certificate("device")]


@needs_openssl
def test_fail_split_script_control_without_cert_part(tmp_path: Path) -> None:
    content_type, body = skg()
    (tmp_path / "skg.body").write_bytes(key_part_only(body))
    split = run(
        [
            sys.executable,
            str(SPLIT_SCRIPT),
            content_type,
            str(tmp_path / "skg.body"),
            str(tmp_path / "out"),
        ]
    )
    assert split.returncode == 2


# --- csrattrs ------------------------------------------------------------------------------


@st.composite
def object_identifiers(draw: st.DrawFn) -> ObjectIdentifier:
    top = draw(st.integers(0, 2))
    second = draw(st.integers(0, 39) if top < 2 else st.integers(0, 2**40))
    rest = draw(st.lists(st.integers(0, 2**70), max_size=8))
    return ObjectIdentifier(".".join(str(a) for a in [top, second, *rest]))


@FUZZ
@given(
    st.lists(object_identifiers(), max_size=10),
    st.lists(
        st.tuples(object_identifiers(), st.lists(object_identifiers(), max_size=3)), max_size=5
    ),
)
def test_ok_csrattrs_round_trip(
    oids: list[ObjectIdentifier], attributes: list[tuple[ObjectIdentifier, list[ObjectIdentifier]]]
) -> None:
    body = encode_csrattrs(oids, attributes=attributes)
    expected = [o.dotted_string for o in oids] + [a.dotted_string for a, _ in attributes]
    assert decode_csrattrs(body) == expected


def test_ok_csrattrs_known_encoding() -> None:
    body = encode_csrattrs([ECDSA_SHA256])
    assert base64.b64decode(body) == bytes.fromhex("300a06082a8648ce3d040302")
    assert encode_csrattrs() == b"MAA=\n"
    assert decode_csrattrs(b"MAA=") == []


def test_ok_csrattrs_long_content_uses_long_form_length() -> None:
    oids = [ObjectIdentifier(f"1.3.6.1.4.1.55555.{i}") for i in range(40)]
    der = base64.b64decode(encode_csrattrs(oids))
    assert der[:2] == b"\x30\x82"
    assert decode_csrattrs(encode_csrattrs(oids)) == [o.dotted_string for o in oids]


@needs_openssl
def test_ok_csrattrs_openssl_asn1parse() -> None:
    private = ObjectIdentifier("1.3.6.1.4.1.55555.1234567890123.7")
    body = encode_csrattrs(
        [CHALLENGE_PASSWORD, ECDSA_SHA256, private], attributes=[(EC_PUBLIC_KEY, [SECP256R1])]
    )
    parsed = run(["openssl", "asn1parse", "-inform", "DER"], base64.b64decode(body))
    assert parsed.returncode == 0, parsed.stderr
    text = parsed.stdout.decode()
    for expected in (
        "challengePassword",
        "ecdsa-with-SHA256",
        private.dotted_string,
        "id-ecPublicKey",
        "prime256v1",
        "SET",
    ):
        assert expected in text
    broken = run(["openssl", "asn1parse", "-inform", "DER"], base64.b64decode(body)[:-3])
    assert broken.returncode != 0


@pytest.mark.parametrize(
    ("der", "reason"),
    [
        pytest.param(b"\x31\x00", "not a DER CsrAttrs", id="fail-set-not-sequence"),
        pytest.param(b"\x30\x00\x00", "1 bytes after", id="fail-trailing-data"),
        pytest.param(b"\x30\x03\x02\x01\x00", "not a DER CsrAttrs", id="fail-integer-entry"),
        pytest.param(b"\x30\x04\x06\x02\x80\x01", "not a DER CsrAttrs", id="fail-oid-leading-0x80"),
        pytest.param(b"\x30\x03\x06\x01\x81", "truncated", id="fail-oid-unterminated"),
        pytest.param(b"\x30\x02\x06\x00", "not a DER CsrAttrs", id="fail-oid-empty"),
        pytest.param(b"\x30\x80\x00\x00", "not a DER CsrAttrs", id="fail-indefinite-length"),
        pytest.param(b"\x30\x81\x02\x06\x00", "not a DER CsrAttrs", id="fail-long-form-for-short"),
        pytest.param(b"\x30\x05\x06\x01\x2a", "truncated", id="fail-length-past-end"),
        pytest.param(
            b"\x30\x07\x30\x05\x06\x01\x2a\x04\x00",
            "not a DER CsrAttrs",
            id="fail-attribute-octets-not-set",
        ),
        pytest.param(
            b"\x30\x05\x30\x03\x06\x01\x2a", "not a DER CsrAttrs", id="fail-attribute-without-set"
        ),
        pytest.param(b"\x3f\x01\x00", "not a DER CsrAttrs", id="fail-multibyte-tag"),
        # Decodes, but the SET OF is not in DER order: one value, one encoding.
        pytest.param(
            bytes.fromhex("300d300b06012a310606012b06012a"),
            "not in canonical DER",
            id="fail-set-of-unsorted",
        ),
    ],
)
def test_fail_decode_csrattrs(der: bytes, reason: str) -> None:
    with pytest.raises(MalformedInput, match=reason):
        decode_csrattrs(b64(der))


@pytest.mark.fuzz
@FUZZ
@given(st.binary(max_size=512))
def test_fail_decode_csrattrs_arbitrary_der(der: bytes) -> None:
    try:
        oids = decode_csrattrs(b64(der))
    except MalformedInput:
        return
    assert all(isinstance(o, str) for o in oids)


# --- interop with openssl as the client ----------------------------------------------------


@needs_openssl
def test_ok_openssl_req_csr_decodes(tmp_path: Path) -> None:
    key = tmp_path / "new.key"
    made = run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            str(key),
        ]
    )
    assert made.returncode == 0, made.stderr
    req = run(
        [
            "openssl",
            "req",
            "-new",
            "-key",
            str(key),
            "-subj",
            "/CN=DEVICE-7/serialNumber=SN-7",
            "-outform",
            "DER",
        ]
    )
    assert req.returncode == 0, req.stderr
    body = base64.encodebytes(req.stdout)  # 76 columns, LF: what `base64` emits by default
    csr = decode_csr(body, content_type="application/pkcs10")
    assert csr_device_id(csr) == "SN-7"
    pem = run(["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=DEVICE-7"])
    with pytest.raises(MalformedInput, match="PEM"):
        decode_csr(pem.stdout, content_type="application/pkcs10")


@needs_openssl
def test_ok_openssl_verifies_our_csr() -> None:
    der = base64.b64decode(encode_csr(build_csr(ec_key(), device_id="DEV-9")))
    verified = run(["openssl", "req", "-inform", "DER", "-verify", "-noout", "-subject"], der)
    assert verified.returncode == 0, verified.stderr
    assert b"DEV-9" in verified.stdout
    tampered = run(["openssl", "req", "-inform", "DER", "-verify", "-noout"], flip_last_byte(der))
    # OpenSSL 3.0 `req -verify` exits 0 either way; the verdict is on stderr.
    assert b"verify OK" in verified.stderr
    assert b"verify failure" in tampered.stderr


@needs_openssl
@pytest.mark.parametrize(
    "decoder", ["base64 -d", "openssl base64 -d"], ids=["ok-coreutils", "ok-openssl"]
)
def test_ok_openssl_reads_certs_only_after_base64_decode(decoder: str) -> None:
    body = encode_certs_only([certificate("leaf"), certificate("issuer")])
    der = run(decoder.split(), body)
    assert der.returncode == 0 and der.stdout, der.stderr
    p7 = run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], der.stdout)
    assert p7.returncode == 0, p7.stderr
    assert x509.load_pem_x509_certificates(p7.stdout) == [
        certificate("leaf"),
        certificate("issuer"),
    ]
    broken = run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], der.stdout[:-10])
    assert broken.returncode != 0


@pytest.mark.parametrize(
    ("boundary", "header"),
    [
        pytest.param("plain-1", "multipart/mixed; boundary=plain-1", id="ok-token-unquoted"),
        pytest.param("a/b=c", 'multipart/mixed; boundary="a/b=c"', id="ok-tspecials-quoted"),
    ],
)
def test_ok_serverkeygen_boundary_quoting(boundary: str, header: str) -> None:
    content_type, body = skg(boundary)
    assert content_type == header
    assert decode_serverkeygen(content_type, body).certificates == (certificate("device"),)


@pytest.mark.parametrize(
    "boundary",
    ["has space", "x" * 71, "semi;colon", "new\nline", "''0", ""],
    ids=[
        "fail-space",
        "fail-too-long",
        "fail-semicolon",
        "fail-newline",
        "fail-quote",
        "fail-empty",
    ],
)
def test_fail_serverkeygen_bad_boundary(boundary: str) -> None:
    with pytest.raises(ValueError, match="boundary"):
        skg(boundary)


def test_fail_invalid_versions_are_malformed() -> None:
    # cryptography's InvalidVersion is not a ValueError; both decoders must still say malformed.
    csr = csr_der(build_csr(ec_key(), device_id="D")).replace(b"\x02\x01\x00", b"\x02\x01\x05", 1)
    with pytest.raises(MalformedInput, match="not a DER PKCS#10"):
        decode_csr(b64(csr), content_type=CSR_TYPE)
    p7 = base64.b64decode(encode_certs_only([certificate("leaf")]))
    version = b"\xa0\x03\x02\x01\x02"
    assert version in p7
    bad = b64(p7.replace(version, b"\xa0\x03\x02\x01\x19", 1))
    with pytest.raises(MalformedInput, match="PKCS#7"):
        decode_certs_only(bad)
    content_type, body = skg()
    good = crlf_base64(base64.b64decode(encode_certs_only([certificate("device")])))
    assert good in body
    bad_p7 = base64.b64decode(encode_certs_only([certificate("device")]))
    bad_p7 = bad_p7.replace(version, b"\xa0\x03\x02\x01\x19", 1)
    with pytest.raises(MalformedInput, match="certificate part"):
        decode_serverkeygen(content_type, body.replace(good, crlf_base64(bad_p7)))


def crlf_base64(der: bytes) -> bytes:
    text = b64(der)
    return b"".join(text[i : i + 64] + b"\r\n" for i in range(0, len(text), 64))
