"""Verification of the node's answer with crafted answers, and the small parsers around it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.device.fake_node import Pki, issue, make_sub

from ztpki.device.agent import Backoff
from ztpki.device.answer import verify_answer
from ztpki.device.communication import NodeAddress, parse_fingerprint, retry_after_seconds
from ztpki.device.faults import FaultInjector
from ztpki.errors import ConfigurationError, VerificationFailed
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.profiles import CertificateProfile

DEVICE = "ACME-0001"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def now() -> datetime:
    return datetime.now(UTC)


def test_ok_answer_with_root_and_issuing_ca(pki: Pki) -> None:
    key = generate_private_key(KeySpec.EC_P256)
    cert = issue(pki.customer, key.public_key(), DEVICE)
    cacerts = [pki.customer.certificate, pki.customer_root.certificate]
    issued = verify_answer(
        device_id=DEVICE, private_key=key, certificates=[cert], cacerts=cacerts, now=now()
    )
    assert issued.certificate == cert
    assert issued.anchor == pki.customer_root.certificate
    assert list(issued.ca_certificates) == cacerts


def test_ok_answer_carrying_its_intermediate(pki: Pki) -> None:
    """cacerts holds only the root; the issuing CA comes with the new certificate."""
    key = generate_private_key(KeySpec.EC_P256)
    cert = issue(pki.customer, key.public_key(), DEVICE)
    issued = verify_answer(
        device_id=DEVICE,
        private_key=key,
        certificates=[pki.customer.certificate, cert],
        cacerts=[pki.customer_root.certificate],
        now=now(),
    )
    assert issued.certificate == cert
    assert issued.ca_certificates[0] == pki.customer.certificate


def test_ok_cacerts_with_only_the_issuing_ca(pki: Pki) -> None:
    key = generate_private_key(KeySpec.EC_P256)
    cert = issue(pki.customer, key.public_key(), DEVICE)
    issued = verify_answer(
        device_id=DEVICE,
        private_key=key,
        certificates=[cert],
        cacerts=[pki.customer.certificate],
        now=now(),
    )
    assert issued.anchor == pki.customer.certificate


def _fail(pki: Pki, kind: str) -> str:
    key = generate_private_key(KeySpec.EC_P256)
    other = generate_private_key(KeySpec.EC_P256)
    cacerts = [pki.customer.certificate, pki.customer_root.certificate]
    previous = None
    at = now()
    if kind == "wrong-chain":
        certs = [issue(pki.rogue, key.public_key(), DEVICE)]
    elif kind == "factory-chain":
        certs = [issue(pki.factory, key.public_key(), DEVICE)]
    elif kind == "rogue-intermediate":
        rogue_sub = make_sub(pki.rogue, "Customer Devices")  # same name, other key
        certs = [issue(rogue_sub, key.public_key(), DEVICE), rogue_sub.certificate]
    elif kind == "mismatching-key":
        certs = [issue(pki.customer, other.public_key(), DEVICE)]
    elif kind == "other-device":
        certs = [issue(pki.customer, key.public_key(), "ACME-0002")]
    elif kind == "expired":
        certs = [issue(pki.customer, key.public_key(), DEVICE)]
        at = now() + timedelta(days=30)
    elif kind == "not-yet-valid":
        certs = [issue(pki.customer, key.public_key(), DEVICE)]
        at = now() - timedelta(hours=1)
    elif kind == "server-certificate":
        certs = [issue(pki.customer, key.public_key(), DEVICE, profile=CertificateProfile.SERVER)]
    elif kind == "same-as-before":
        certs = [issue(pki.customer, key.public_key(), DEVICE)]
        previous = certs[0]
    elif kind == "no-certificate":
        certs = []
    elif kind == "no-cacerts":
        certs = [issue(pki.customer, key.public_key(), DEVICE)]
        cacerts = []
    else:
        raise AssertionError(kind)
    with pytest.raises(VerificationFailed) as info:
        verify_answer(
            device_id=DEVICE,
            private_key=key,
            certificates=certs,
            cacerts=cacerts,
            now=at,
            previous=previous,
        )
    return info.value.message


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("wrong-chain", "does not chain to the customer CA"),
        ("factory-chain", "does not chain"),
        ("rogue-intermediate", "does not chain"),
        ("mismatching-key", "another key"),
        ("other-device", "names device 'ACME-0002'"),
        ("expired", "expired"),
        ("not-yet-valid", "not valid before"),
        ("server-certificate", "does not chain"),
        ("same-as-before", "already has"),
        ("no-certificate", "no certificate"),
        ("no-cacerts", "no CA certificate"),
    ],
    ids=lambda v: f"fail-{v}" if " " not in v else "",
)
def test_fail_crafted_answers(pki: Pki, kind: str, says: str) -> None:
    message = _fail(pki, kind)
    assert says in message
    assert "PRIVATE KEY" not in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://node.example:8443", NodeAddress("node.example", 8443)),
        ("https://node.example", NodeAddress("node.example", 443)),
        ("https://127.0.0.1:1234/fleet", NodeAddress("127.0.0.1", 1234, "fleet")),
        ("https://127.0.0.1:1234/.well-known/est/fleet/", NodeAddress("127.0.0.1", 1234, "fleet")),
        ("https://[::1]:99", NodeAddress("::1", 99)),
    ],
)
def test_ok_node_address(url: str, expected: NodeAddress) -> None:
    address = NodeAddress.parse(url)
    assert address == expected
    assert NodeAddress.parse(str(address)) == address
    assert address.url("cacerts").endswith(
        "/.well-known/est" + (f"/{expected.label}" if expected.label else "") + "/cacerts"
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://node:80",
        "node:8443",
        "https://user:pw@node:1",
        "https://node:1/a/b",
        "https://node:1/?x=1",
        "https://node:99999",
        "https://node:1/bad label",
    ],
)
def test_fail_node_address(url: str) -> None:
    with pytest.raises(ConfigurationError):
        NodeAddress.parse(url)


def test_fingerprint_forms() -> None:
    hex64 = "ab" * 31 + "0f"
    colons = ":".join(hex64[i : i + 2] for i in range(0, 64, 2)).upper()
    for good in (
        f"sha256:{hex64}",
        f"SHA256:{hex64.upper()}",
        hex64,
        hex64.upper(),
        colons,
        f"sha256:{colons}",
        f"SHA256:{colons.lower()}",
        f"sha256 Fingerprint={colons}",  # openssl x509 -noout -fingerprint -sha256
        f"  {colons}\n",
    ):
        assert parse_fingerprint(good) == hex64, good
    for bad in (f"sha1:{hex64}", "sha256:abc", f"sha256:{hex64}00", "1234", "", hex64[:-1] + "g"):
        with pytest.raises(ConfigurationError):
            parse_fingerprint(bad)


def test_retry_after_forms() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("17") == 17
    assert retry_after_seconds(None) == 0
    assert retry_after_seconds("soon") == 5
    assert retry_after_seconds("999999") == 3600
    assert retry_after_seconds("Tue, 01 Jan 2030 00:01:00 GMT", now=at) == 60
    assert retry_after_seconds("Mon, 31 Dec 2029 00:00:00 GMT", now=at) == 0


@given(attempt=st.integers(0, 200), jitter=st.floats(0, 1, exclude_max=True))
def test_backoff_bounds(attempt: int, jitter: float) -> None:
    backoff = Backoff(base=1.0, cap=300.0)
    ceiling = min(300.0, 2.0**attempt)
    assert ceiling / 2 <= backoff.delay(attempt, jitter=jitter) <= ceiling


def test_backoff_doubles_then_caps() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    assert [backoff.delay(n, jitter=0.0) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]
    with pytest.raises(ValueError):
        Backoff(base=0)


def test_fault_injection_is_off_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZTPKI_DEVICE_FAULT", raising=False)
    assert FaultInjector.from_env() is None
    monkeypatch.setenv("ZTPKI_DEVICE_FAULT", "after-lunch")
    with pytest.raises(ConfigurationError, match="before-request"):
        FaultInjector.from_env()
    killed: list[str] = []
    injector = FaultInjector("mid-replace", kill=lambda: killed.append("x"))
    injector.memory_hook("tmp-written")  # not armed yet
    injector.at("after-answer")
    injector.at("mid-replace")  # arms only
    assert killed == []
    injector.memory_hook("tmp-open")
    injector.memory_hook("tmp-written")
    assert killed == ["x"]
