"""The authentication module remembers verified certificates, but never past a validity boundary."""

from __future__ import annotations

from datetime import timedelta

import pytest
from node_pki import NOW, PKI, counting_verifications, der, leaf

from ztpki.errors import NotAuthenticated
from ztpki.node import authentication
from ztpki.node.authentication import IdentityKind


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI.create()


def test_ok_second_request_uses_the_remembered_identity(pki: PKI) -> None:
    module = pki.authentication()
    calls = counting_verifications(module)
    _, cert = pki.temporary("dev-1")
    first = module.authenticate(der(cert), now=NOW)
    second = module.authenticate(der(cert), now=NOW + timedelta(minutes=5))
    assert second == first and second.kind is IdentityKind.TEMPORARY
    assert len(calls) == 1
    # negative control: another certificate is verified in full
    _, other = pki.temporary("dev-2")
    assert module.authenticate(der(other), now=NOW).device_id == "dev-2"
    assert len(calls) == 2


def test_fail_expired_after_being_remembered(pki: PKI) -> None:
    module = pki.authentication()
    _, cert = leaf(
        pki.factory_ca, "dev-x", not_before=NOW - timedelta(hours=1), validity=timedelta(hours=2)
    )
    assert module.authenticate(der(cert), now=NOW).device_id == "dev-x"
    with pytest.raises(NotAuthenticated):
        module.authenticate(der(cert), now=NOW + timedelta(hours=1, seconds=1))
    # negative control: still inside the validity period it is accepted again
    assert module.authenticate(der(cert), now=NOW + timedelta(minutes=59)).device_id == "dev-x"


def test_fail_before_validity_after_being_remembered(pki: PKI) -> None:
    module = pki.authentication()
    _, cert = leaf(pki.factory_ca, "dev-y", not_before=NOW - timedelta(minutes=10))
    assert module.authenticate(der(cert), now=NOW).device_id == "dev-y"
    with pytest.raises(NotAuthenticated):
        module.authenticate(der(cert), now=NOW - timedelta(minutes=11))


def test_fail_refusals_are_not_remembered(pki: PKI) -> None:
    module = pki.authentication()
    calls = counting_verifications(module)
    _, cert = leaf(pki.factory_ca, "dev-z", not_before=NOW + timedelta(days=1))
    for _ in range(2):
        with pytest.raises(NotAuthenticated):
            module.authenticate(der(cert), now=NOW)
    assert len(calls) == 2
    # negative control: once valid, it verifies (and only then is remembered)
    later = NOW + timedelta(days=1, hours=1)
    module.authenticate(der(cert), now=later)
    module.authenticate(der(cert), now=later)
    assert len(calls) == 3


def test_ok_bounded(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authentication, "VERIFIED_CACHE_SIZE", 2)
    module = pki.authentication()
    calls = counting_verifications(module)
    certs = [der(pki.temporary(f"dev-{i}")[1]) for i in range(3)]
    for cert in certs:
        module.authenticate(cert, now=NOW)
    module.authenticate(certs[2], now=NOW)  # remembered
    assert len(calls) == 3
    module.authenticate(certs[0], now=NOW)  # the oldest was dropped
    assert len(calls) == 4
