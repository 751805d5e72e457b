"""Which manufacturer a temporary certificate chains to, and the register holding it to that."""

from __future__ import annotations

from dataclasses import replace

import pytest
from node_pki import NOW, PKI, leaf, sub_ca

from ztpki.node.authentication import AuthenticationModule, CustomerCA, FactoryTrust
from ztpki.node.authorization import (
    Action,
    EnrollmentContext,
    Operation,
    RefusalReason,
    Refused,
    decide,
)
from ztpki.pki.pem import certificate_der
from ztpki.store.records import DeviceState, RegisteredDevice

ACME, GLOBEX = PKI.create(), PKI.create()
# A third maker whose issuing CA hangs from Acme's root (a sister company's line).
SISTER = sub_ca(ACME.factory_root, "sister factory CA")


def module() -> AuthenticationModule:
    return AuthenticationModule(
        FactoryTrust.from_manufacturers(
            [
                ("Acme", ACME.bundle()),
                ("Globex", GLOBEX.bundle()),
                ("Sister", [SISTER.certificate, ACME.factory_root.certificate]),
            ]
        ),
        [CustomerCA("default", ACME.operational.chain)],
    )


@pytest.mark.parametrize("tls_verified", [False, True], ids=["full-path", "known-issuer"])
def test_ok_identity_names_the_manufacturers_whose_bundle_carries_it(tls_verified: bool) -> None:
    auth = module()
    cases = [
        (leaf(ACME.factory_ca, "ACME-1")[1], {"Acme"}),
        (leaf(GLOBEX.factory_ca, "GLX-1")[1], {"Globex"}),
        (leaf(SISTER, "SIS-1")[1], {"Sister"}),  # not Acme's, though under Acme's root
        (leaf(ACME.factory_root, "ROOT-1")[1], {"Acme", "Sister"}),  # the root itself
    ]
    for cert, makers in cases:
        for _ in range(2):  # the second time the known-issuer shortcut may answer
            identity = auth.authenticate(
                certificate_der(cert), now=NOW, chain_verified_by_tls=tls_verified
            )
            assert identity.manufacturers == makers, identity.device_id


def test_unnamed_bundles_name_no_manufacturer() -> None:
    auth = AuthenticationModule(FactoryTrust.from_bundles([ACME.bundle()]), [])
    identity = auth.authenticate(certificate_der(leaf(ACME.factory_ca, "d1")[1]), now=NOW)
    assert identity.manufacturers == frozenset()


def _row(device_id: str, fingerprint: str, manufacturer: str | None) -> RegisteredDevice:
    return RegisteredDevice(
        device_id=device_id,
        state=DeviceState.LISTED,
        temp_fingerprint=fingerprint,
        manufacturer=manufacturer,
        model=None,
        batch=None,
        manifest_id=None,
        issued_serial=None,
        issued_spki=None,
        issued_certificate_der=None,
        issued_chain_der=(),
        blocked_from=None,
        lease_token=None,
        lease_expires=None,
        previous_state=None,
        updated_at=NOW,
    )


def test_fail_clone_under_another_manufacturers_root() -> None:
    auth = module()
    genuine = auth.authenticate(certificate_der(leaf(ACME.factory_ca, "ACME-1")[1]), now=NOW)
    clone = auth.authenticate(certificate_der(leaf(GLOBEX.factory_ca, "ACME-1")[1]), now=NOW)
    context = EnrollmentContext(Operation.SIMPLEENROLL, "default", "ACME-1", "cd" * 32)
    # Listed by hand for Acme without a fingerprint: only Acme's CA vouches for it.
    by_hand = _row("ACME-1", None, "Acme")  # type: ignore[arg-type]
    with pytest.raises(Refused) as refused:
        decide(by_hand, clone, context)
    assert refused.value.reason is RefusalReason.MANUFACTURER_MISMATCH
    assert "listed for manufacturer 'Acme'" in refused.value.message
    assert decide(by_hand, genuine, context).action is Action.ISSUE  # control
    # Listed by a manifest (fingerprint too): the manufacturer is checked first.
    listed = replace(by_hand, temp_fingerprint=genuine.fingerprint)
    with pytest.raises(Refused) as refused:
        decide(listed, clone, context)
    assert refused.value.reason is RefusalReason.MANUFACTURER_MISMATCH
    # Listed by fingerprint alone, without a manufacturer: the fingerprint decides.
    pinned = replace(listed, manufacturer=None)
    assert decide(pinned, genuine, context).action is Action.ISSUE
    with pytest.raises(Refused) as refused:
        decide(pinned, clone, context)
    assert refused.value.reason is RefusalReason.FINGERPRINT_MISMATCH
