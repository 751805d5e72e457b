"""genm's values (node/cmp_general.py): caCerts as RFC 9480's CaCertsValue, and the root CA
update answer for a device that names the root it trusts."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from pyasn1_alt_modules import rfc9480
from tests.support.cmp_mock import MockPKI

from ztpki.node.cmp_general import ca_certs_value, root_update_value
from ztpki.pki.asn1 import decode_der, encode_der
from ztpki.protocol.cmp import BadDataFormat, BadRequest


def _der(pki: MockPKI) -> bytes:
    return pki.ca.public_bytes(serialization.Encoding.DER)


def test_ok_ca_certs_value() -> None:
    pki = MockPKI.create()
    value = decode_der(ca_certs_value((pki.server, pki.ca)), rfc9480.CaCertsValue(), what="v")
    assert [encode_der(c) for c in value] == [
        pki.server.public_bytes(serialization.Encoding.DER),
        _der(pki),
    ]


def test_ok_root_update_only_for_another_root() -> None:
    current, old = MockPKI.create(), MockPKI.create()
    assert root_update_value(_der(current), (current.server, current.ca)) is None
    update = root_update_value(_der(old), (current.server, current.ca))
    assert update is not None
    value = decode_der(update, rfc9480.RootCaKeyUpdateContent(), what="update")
    assert encode_der(value["newWithNew"]) == _der(current)
    assert not value["newWithOld"].isValue  # no cross certificate: the device decides


@pytest.mark.parametrize(
    ("asked", "error"),
    [(None, BadRequest), (b"\x30\x03\x02\x01\x00", BadDataFormat)],
    ids=["fail-no-root-named", "fail-not-a-certificate"],
)
def test_fail_root_update_without_a_root(asked: bytes | None, error: type[Exception]) -> None:
    current = MockPKI.create()
    with pytest.raises(error):
        root_update_value(asked, (current.server, current.ca))
