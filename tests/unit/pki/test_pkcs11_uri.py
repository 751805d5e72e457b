"""RFC 7512 PKCS#11 URIs: what parses, what is refused and why, and the canonical form."""

from __future__ import annotations

import pytest

from ztpki.errors import MalformedInput
from ztpki.pki.pkcs11_uri import Pkcs11Uri


def test_ok_token_object_id_and_query() -> None:
    uri = Pkcs11Uri.parse(
        "pkcs11:token=Factory%20CA;object=root-key;id=%01%a2;type=private"
        "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"
    )
    assert uri.token == "Factory CA"
    assert uri.object == "root-key"
    assert uri.id == b"\x01\xa2"
    assert uri.type == "private"
    assert uri.module_path == "/usr/lib/softhsm/libsofthsm2.so"
    assert uri.pin_source == "file:/run/pin"
    assert uri.require_key() is uri


def test_ok_canonical_text_round_trips() -> None:
    text = "pkcs11:token=Factory%20CA;object=k%3Bx;id=%01%FF;slot-id=3?module-path=/m.so"
    uri = Pkcs11Uri.parse(text)
    assert uri.object == "k;x"
    assert Pkcs11Uri.parse(uri.text) == uri
    assert str(uri) == uri.text


def test_ok_vendor_attributes_are_ignored() -> None:
    assert Pkcs11Uri.parse("pkcs11:token=a;x-vendor=1;object=b").object == "b"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("token=a;object=b", "starts with 'pkcs11:'"),
        ("pkcs11:token=a;colour=b", "unknown PKCS#11 URI attribute 'colour'"),
        ("pkcs11:token=a;token=b", "given twice"),
        ("pkcs11:token", "has no '=value'"),
        ("pkcs11:token=a;object=b?pin-value=1234", "carries a PIN"),
        ("pkcs11:token=a;type=secret", "not one of"),
        ("pkcs11:slot-id=x1", "decimal"),
        ("pkcs11:object=%zz", "broken %-escape"),
        ("pkcs11:object=%ff%fe", "not UTF-8"),
        ("pkcs11:" + "a" * 5000, "longer than 4096"),
    ],
    ids=[
        "fail-scheme",
        "fail-unknown",
        "fail-twice",
        "fail-novalue",
        "fail-pin-value",
        "fail-type",
        "fail-slot",
        "fail-escape",
        "fail-utf8",
        "fail-long",
    ],
)
def test_fail_malformed(text: str, says: str) -> None:
    with pytest.raises(MalformedInput, match=says):
        Pkcs11Uri.parse(text)


def test_fail_pin_never_in_message() -> None:
    with pytest.raises(MalformedInput) as raised:
        Pkcs11Uri.parse("pkcs11:token=a;object=b?pin-value=s3cret-pin")
    assert "s3cret-pin" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("pkcs11:object=b", "names no token"),
        ("pkcs11:token=a", "names no key object"),
        ("pkcs11:token=a;object=b;type=cert", "not a private key"),
    ],
    ids=["fail-no-token", "fail-no-object", "fail-cert"],
)
def test_fail_not_a_key(text: str, says: str) -> None:
    with pytest.raises(MalformedInput, match=says):
        Pkcs11Uri.parse(text).require_key()


def test_ok_with_object_replaces_label_and_drops_id() -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=a;object=b;id=%01").with_object("c")
    assert (uri.token, uri.object, uri.id) == ("a", "c", None)
