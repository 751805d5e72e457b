"""Relying-party revocation attacks: the node as the relying party of the factory CA's CRL.

The deployment's node is restarted with its manufacturer's CRL configured (`[manufacturer.NAME]
crl`, the factory CA system's `cas/factory/crl.der`), and put back as it was afterwards. Each
case checks the HTTP status and message, the register, the audit trail, the CA records, and
that a legitimate device still customizes itself afterwards.
"""

from __future__ import annotations

import os
import signal
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from tests.attacks.attack_deployment import (
    MANUFACTURER,
    Deployment,
    DeviceUnderTest,
    now,
    wait_until,
)
from tests.attacks.attack_report import AttackReport
from tests.support.services import child_pids

from ztpki.pki.crl import build_crl
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import serial_hex
from ztpki.protocol.est import build_csr, encode_csr

pytestmark = pytest.mark.timeout(240)

CATEGORY = "revocation-relying"


def _record(report: AttackReport, case: str, attack: str, observed: str, verdict: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed=observed,
        verdict=verdict,
    )


@contextmanager
def _node_with_crl(d: Deployment, **settings: object) -> Iterator[None]:
    """The node restarted with these CRL settings for MANUFACTURER; restored afterwards."""
    path = d.node_dir / "node.toml"
    original = path.read_text()
    data = tomllib.loads(original)
    data["manufacturer"][MANUFACTURER].update(settings)
    path.write_text(tomli_w.dumps(data))
    d.node.stop()
    d.serve_node()
    try:
        yield
    finally:
        path.write_text(original)
        d.node.stop()
        d.serve_node()


def _simpleenroll(d: Deployment, device: DeviceUnderTest) -> str:
    csr = encode_csr(build_csr(generate_private_key(KeySpec.EC_P256), device_id=device.device_id))
    return d.est("simpleenroll", key=device.key, chain=[device.certificate], body=csr).summary()


def test_fail_stolen_temporary_certificate_revoked_by_the_factory(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    factory_crl = d.factory_dir / "cas" / "factory" / "crl.der"
    with _node_with_crl(d, crl=[str(factory_crl)]):
        stolen = d.take_device()
        # The manufacturer learns the device was stolen from the line and revokes it.
        revoke = ["--dir", str(d.factory_dir), "--name", "factory"]
        revoke += ["--serial", serial_hex(stolen.certificate), "--reason", "keyCompromise"]
        d.cli("ca", "revoke", *revoke, system="factory")
        mark = d.log_mark()
        workers = max(1, len(child_pids(d.node.pid)))  # the next request may reach any worker
        os.kill(d.node.pid, signal.SIGHUP)
        assert wait_until(
            lambda: d.logged_since(mark).count("factory CRLs refreshed on request") >= workers,
            timeout=30,
        )
        before = d.snapshot()
        answer = _simpleenroll(d, stolen)
        assert answer.startswith("HTTP 403") and "revoked by its factory CA" in answer, answer
        assert "keyCompromise" in answer
        checked = d.check_unchanged(
            before, audited=[(stolen.device_id, "refused", "revoked by its factory CA")]
        )
        served = d.serve_next_device()
    _record(
        attack_report,
        "stolen-temporary-certificate-revoked",
        "a thief enrolls with a temporary certificate the manufacturer revoked (`ca revoke "
        "--reason keyCompromise` at the factory CA system; the node fetched the CRL on SIGHUP)",
        f"{answer}; {checked}; {served}",
        "refused",
    )


def _stale_crl(d: Deployment, path: Path) -> Path:
    """A genuine CRL of the factory CA, signed by its key, whose nextUpdate has passed."""
    authority = d.authority("factory", "factory")
    crl = build_crl(
        authority, [], number=1, now=now() - timedelta(hours=3), next_update=timedelta(hours=1)
    )
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    return path


def test_fail_stale_crl_fails_closed(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    stale = _stale_crl(d, d.root / "stale-factory.crl")
    with _node_with_crl(d, crl=[str(stale)]):
        device = d.take_device()
        mark = d.log_mark()
        before = d.snapshot()
        answer = _simpleenroll(d, device)
        assert answer.startswith("HTTP 503") and "fail_open = false" in answer, answer
        assert "stale" in answer
        checked = d.check_unchanged(before, audited=[(device.device_id, "deferred", "stale")])
        logged = d.logged_since(mark)
        assert "WARNING" in logged and "fail_open = false" in logged, logged
    # Negative control: with the factory's current CRL again, the same device enrolls.
    with _node_with_crl(d, crl=[str(d.factory_dir / "cas" / "factory" / "crl.der")]):
        again = _simpleenroll(d, device)
        assert again.startswith("HTTP 200"), again
        d.served.append(device.device_id)
    _record(
        attack_report,
        "stale-crl-fail-closed",
        "the factory's CRL server is down and the CRL the node holds is past its nextUpdate "
        "(a revocation since then could be hidden); fail_open = false (the default)",
        f"{answer}; {checked}; a clear warning logged; with a current CRL the device enrolls",
        "refused",
    )
