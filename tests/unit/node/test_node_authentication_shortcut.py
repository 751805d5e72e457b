"""The known-issuer shortcut for TLS-verified certificates reaches full verification's verdict."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import timedelta

import pytest
from cryptography import x509
from node_pki import (
    NOW,
    PKI,
    counting_verifications,
    der,
    leaf,
    name,
    sub_ca,
    with_namesake_factory_ca,
)

from ztpki.errors import NotAuthenticated
from ztpki.node.authentication import (
    AuthenticationModule,
    ClientIdentity,
    CustomerCA,
    FactoryTrust,
    IdentityKind,
)
from ztpki.node.config import Limits, ProxyConfig
from ztpki.node.http import EstApplication
from ztpki.node.metrics import NodeMetrics
from ztpki.node.proxy import ForwardedCertificate
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.profiles import CertificateProfile


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI.create()


def _primed(pki: PKI, **kwargs: object) -> AuthenticationModule:
    """A module that has verified one temporary and one operational certificate in full."""
    module = pki.authentication(**kwargs)
    for cert in (pki.temporary("primer")[1], leaf(pki.operational, "primer")[1]):
        module.authenticate(der(cert), now=NOW, chain_verified_by_tls=True)
    return module


def _verdict(
    authenticate: Callable[[], ClientIdentity],
) -> tuple[IdentityKind, str, str, str, str | None] | str:
    try:
        identity = authenticate()
    except NotAuthenticated as exc:
        return f"refused: {exc.message}"
    return (
        identity.kind,
        identity.device_id,
        identity.fingerprint,
        identity.serial,
        identity.label,
    )


CASES = [
    "ok-temporary",
    "ok-operational",
    "fail-expired",
    "fail-not-yet-valid",
    "fail-server-profile",
    "fail-sibling-ca",
    "fail-same-name-as-factory-ca-other-key",
    "fail-same-name-as-label-ca-under-factory-root",
]


def _certificate(pki: PKI, case: str) -> x509.Certificate:
    if case == "ok-operational":
        return leaf(pki.operational, "dev-1")[1]
    if case == "fail-expired":
        return leaf(
            pki.factory_ca,
            "dev-1",
            not_before=NOW - timedelta(hours=20),
            validity=timedelta(hours=1),
        )[1]
    if case == "fail-not-yet-valid":
        return leaf(pki.factory_ca, "dev-1", not_before=NOW + timedelta(days=1))[1]
    if case == "fail-server-profile":
        return leaf(pki.factory_ca, "dev-1", profile=CertificateProfile.SERVER)[1]
    if case == "fail-sibling-ca":
        return leaf(pki.sibling, "dev-1")[1]
    if case == "fail-same-name-as-factory-ca-other-key":
        return leaf(sub_ca(PKI.create().factory_root, "factory CA"), "dev-1")[1]
    if case == "fail-same-name-as-label-ca-under-factory-root":
        # A manufacturer minting "operational" identities with a CA named like the customer's.
        return leaf(sub_ca(pki.factory_root, "operational"), "dev-1")[1]
    return pki.temporary("dev-1")[1]


@pytest.mark.parametrize("case", CASES)
def test_ok_shortcut_verdict_is_the_full_verdict(pki: PKI, case: str) -> None:
    cert = _certificate(pki, case)
    shortcut = _primed(pki)
    calls = counting_verifications(shortcut)
    full = pki.authentication()
    expected = _verdict(lambda: full.authenticate(der(cert), now=NOW))
    got = _verdict(lambda: shortcut.authenticate(der(cert), now=NOW, chain_verified_by_tls=True))
    assert got == expected
    assert isinstance(expected, str) == case.startswith("fail-")
    # Accepted certificates took the shortcut; every refusal was reached and worded by full
    # verification.
    assert len(calls) == (0 if case.startswith("ok-") else 1)


def test_fail_proxy_certificates_always_get_full_verification(pki: PKI) -> None:
    module = _primed(pki)
    calls = counting_verifications(module)
    _, cert = pki.temporary("dev-2")
    module.authenticate(der(cert), now=NOW, chain_verified_by_tls=True)
    assert calls == []
    # The same certificate from a proxy header: the shortcut's result is not reused.
    assert module.authenticate(der(cert), now=NOW).device_id == "dev-2"
    assert calls == [der(cert)]
    # ... and after that full verification, TLS callers reuse it (negative control).
    module.authenticate(der(cert), now=NOW, chain_verified_by_tls=True)
    assert calls == [der(cert)]


def test_fail_no_shortcut_before_a_full_verification_through_the_issuer(pki: PKI) -> None:
    module = pki.authentication()
    calls = counting_verifications(module)
    for device_id in ("dev-1", "dev-2"):
        module.authenticate(der(pki.temporary(device_id)[1]), now=NOW, chain_verified_by_tls=True)
    assert len(calls) == 1  # the first went the full way and vouched for its issuer's path
    # negative control: the operational issuer has not been seen yet
    module.authenticate(der(leaf(pki.operational, "dev-1")[1]), now=NOW, chain_verified_by_tls=True)
    assert len(calls) == 2


def test_fail_no_shortcut_past_a_validity_boundary(pki: PKI) -> None:
    # A factory CA that expires in ten days: its end is a boundary of every stretch.
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=name("short-lived factory CA"),
        profile=CertificateProfile.CA,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=10),
        path_length=0,
    )
    short = CertificateAuthority(
        name="short",
        key=key,
        certificate=pki.factory_root.issue(key.public_key(), grant),
        parents=pki.factory_root.chain,
    )
    module = AuthenticationModule(
        FactoryTrust.from_bundles([[short.certificate, pki.factory_root.certificate]]),
        [CustomerCA("default", pki.operational.chain)],
    )
    calls = counting_verifications(module)
    module.authenticate(der(leaf(short, "primer")[1]), now=NOW, chain_verified_by_tls=True)
    soon = NOW + timedelta(days=5)
    module.authenticate(
        der(leaf(short, "dev-1", not_before=soon)[1]),
        now=soon + timedelta(hours=1),
        chain_verified_by_tls=True,
    )
    assert len(calls) == 1  # negative control: inside the stretch the shortcut holds
    late = NOW + timedelta(days=11)
    with pytest.raises(NotAuthenticated):
        module.authenticate(der(leaf(short, "dev-2")[1]), now=late, chain_verified_by_tls=True)
    assert len(calls) == 2  # past the CA's end: full verification, which refuses


def test_fail_no_shortcut_when_configured_names_repeat(pki: PKI) -> None:
    module, namesake = with_namesake_factory_ca(pki)
    calls = counting_verifications(module)
    for device_id in ("dev-1", "dev-2"):
        temporary = leaf(namesake, device_id)[1]
        identity = module.authenticate(der(temporary), now=NOW, chain_verified_by_tls=True)
        assert identity.kind is IdentityKind.TEMPORARY
        operational = leaf(pki.operational, device_id)[1]
        identity = module.authenticate(der(operational), now=NOW, chain_verified_by_tls=True)
        assert identity.kind is IdentityKind.OPERATIONAL
    assert len(calls) == 4  # every one verified in full: the issuer name is ambiguous


def test_fail_only_the_tls_listener_claims_a_tls_verified_chain(pki: PKI) -> None:
    def application(**kwargs: object) -> EstApplication:
        return EstApplication(
            None,  # type: ignore[arg-type]  # no request is served here
            pki.authentication(),
            limits=Limits(),
            metrics=NodeMetrics(),
            **kwargs,  # type: ignore[arg-type]
        )

    assert application()._chain_verified_by_tls
    proxy = ForwardedCertificate(ProxyConfig(trusted=(ipaddress.ip_network("127.0.0.1/32"),)))
    assert not application(client_certificate=proxy)._chain_verified_by_tls
    assert not application(client_certificate=lambda request: None)._chain_verified_by_tls
