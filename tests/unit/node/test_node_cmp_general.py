"""genm's values (node/cmp_general.py): caCerts as RFC 9480's CaCertsValue, and the root CA
update answer for a device that names the root it trusts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from pyasn1_alt_modules import rfc9480
from tests.support.cmp_mock import NOW, MockPKI

from ztpki.node.cmp_general import ca_certs_value, root_update_value
from ztpki.pki.asn1 import decode_der, encode_der
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.rollover import update_root_key
from ztpki.protocol.cmp import BadDataFormat, BadRequest

DER = serialization.Encoding.DER


def _der(pki: MockPKI) -> bytes:
    return pki.ca.public_bytes(serialization.Encoding.DER)


def test_ok_ca_certs_value() -> None:
    pki = MockPKI.create()
    value = decode_der(ca_certs_value((pki.server, pki.ca)), rfc9480.CaCertsValue(), what="v")
    assert [encode_der(c) for c in value] == [
        pki.server.public_bytes(serialization.Encoding.DER),
        _der(pki),
    ]


def _plain(tagged: object) -> bytes:
    """A tagged CMPCertificate's DER without its explicit tag (as x509 loads it)."""
    der = encode_der(tagged)
    length = der[1]
    return der[2 + (length - 0x80 if length & 0x80 else 0) :]


def test_ok_root_update_after_a_rollover() -> None:
    current = MockPKI.create()
    key = generate_private_key(KeySpec.EC_P256)
    update = update_root_key(current.ca_key, current.ca, key, now=NOW, validity=timedelta(days=90))
    chain = (current.server, current.ca, update.new_with_new, *update.links)
    assert root_update_value(_der(current), (current.server, current.ca)) is None  # no rollover
    value = decode_der(
        root_update_value(_der(current), chain) or b"", rfc9480.RootCaKeyUpdateContent(), what="u"
    )
    assert encode_der(value["newWithNew"]) == update.new_with_new.public_bytes(DER)
    assert _plain(value["newWithOld"]) == update.new_with_old.public_bytes(DER)
    assert _plain(value["oldWithNew"]) == update.old_with_new.public_bytes(DER)
    # Asked with the new root: it is the current one, no update.
    assert root_update_value(update.new_with_new.public_bytes(DER), chain) is None


def test_fail_root_update_for_a_root_not_served() -> None:
    current, other = MockPKI.create(), MockPKI.create()
    with pytest.raises(BadRequest, match="does not serve"):
        root_update_value(_der(other), (current.server, current.ca))
    with pytest.raises(BadRequest, match="does not serve"):  # a certificate, not a root
        root_update_value(current.server.public_bytes(DER), (current.server, current.ca))


@pytest.mark.parametrize(
    ("asked", "error"),
    [(None, BadRequest), (b"\x30\x03\x02\x01\x00", BadDataFormat)],
    ids=["fail-no-root-named", "fail-not-a-certificate"],
)
def test_fail_root_update_without_a_root(asked: bytes | None, error: type[Exception]) -> None:
    current = MockPKI.create()
    with pytest.raises(error):
        root_update_value(asked, (current.server, current.ca))
