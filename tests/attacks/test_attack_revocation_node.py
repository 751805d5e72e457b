"""Attacks on "a certificate the register calls dead is dead everywhere" (invariant 7), from the
customer node's side: certificates the register superseded, blocked or retired must not stay
valid TLS client identities under the customer CA.

The issue's opening scenario, tried as an attacker would: three serverkeygen answers for one
device (the attacker keeps each key and certificate) and a `node block`. Afterwards the CA
system's store and its CRL (`ztpki ca crl`, checked with `openssl verify -crl_check`) must list
every one of them, and after `unblock` only the device's live certificate is valid again.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.attacks.attack_deployment import Deployment, wait_until
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import Observed

from ztpki.pki.keys import PrivateKey, decode_pkcs8
from ztpki.pki.pem import serial_hex
from ztpki.protocol.est import build_csr, decode_serverkeygen, encode_csr

CATEGORY = "revocation"
CUSTOMER_CA = "devices"  # the CA behind the node's default EST label
# The running node looks at its queue every poll_seconds (2 s by default) and at once when it
# queued an order itself; a CA system round trip after that.
WAIT = 90.0


def _ask(d: Deployment, key: PrivateKey, cert: x509.Certificate, device_id: str) -> Observed:
    body = encode_csr(build_csr(key, device_id=device_id))
    return d.est("serverkeygen", key=key, chain=[cert], body=body)


def _serverkeygen(
    d: Deployment, key: PrivateKey, cert: x509.Certificate, device_id: str
) -> x509.Certificate:
    obs = _ask(d, key, cert, device_id)
    assert obs.status == 200, obs.summary()
    parsed = decode_serverkeygen(obs.headers["Content-Type"], obs.body)
    decode_pkcs8(parsed.private_key_der, passphrase=None)  # the attacker holds a usable key
    return parsed.certificates[0]


def _status(d: Deployment, serial: str) -> dict[str, Any]:
    done = d.operator(
        "ca",
        "status",
        "--dir",
        str(d.customer_dir),
        "--name",
        CUSTOMER_CA,
        "--serial",
        serial,
        "--json",
    )
    assert done.status == 0, done.err
    status: dict[str, Any] = json.loads(done.out)
    return status


def _reason(d: Deployment, serial: str) -> str | None:
    status = _status(d, serial)
    return None if status["status"] == "good" else str(status["reason"])


def _wait_reason(d: Deployment, serial: str, reason: str | None) -> None:
    assert wait_until(lambda: _reason(d, serial) == reason, timeout=WAIT, interval=0.2), (
        serial,
        _status(d, serial),
        reason,
    )


def _openssl_verify(
    d: Deployment, certificate: x509.Certificate, work: Path
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -crl_check` of certificate against the customer CA chain and the CRL
    the operator exports now (`ztpki ca crl`)."""
    crl = work / f"crl-{serial_hex(certificate)}.pem"
    done = d.operator(
        "ca",
        "crl",
        "--dir",
        str(d.customer_dir),
        "--name",
        CUSTOMER_CA,
        "--out",
        str(crl),
        "--pem",
        "--force",
        system="customer",
    )
    assert done.status == 0, done.err
    leaf = work / f"leaf-{serial_hex(certificate)}.pem"
    leaf.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    chain = d.certificates("customer-chain.pem")
    root = work / "root.pem"
    root.write_bytes(chain[-1].public_bytes(serialization.Encoding.PEM))
    untrusted = work / "intermediates.pem"
    untrusted.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[:-1]))
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(root),
            "-untrusted",
            str(untrusted),
            "-CRLfile",
            str(crl),
            str(leaf),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_contained_superseded_answers_and_block(
    deployment: Deployment, attack_report: AttackReport, tmp_path: Path
) -> None:
    d = deployment
    device = d.take_device()
    key, temp = device.key, device.certificate
    answers = [_serverkeygen(d, key, temp, device.device_id) for _ in range(3)]
    first, second, live = (serial_hex(c) for c in answers)
    _wait_reason(d, first, "superseded")
    _wait_reason(d, second, "superseded")
    assert _reason(d, live) is None  # the device's one certificate stays good
    blocked = d.operator("node", "block", "--dir", str(d.node_dir), device.device_id)
    assert blocked.status == 0, blocked.err
    _wait_reason(d, live, "certificateHold")
    verified = [_openssl_verify(d, c, tmp_path) for c in answers]
    assert all(v.returncode != 0 and "revoked" in v.stdout + v.stderr for v in verified), verified
    unblocked = d.operator("node", "unblock", "--dir", str(d.node_dir), device.device_id)
    assert unblocked.status == 0, unblocked.err
    _wait_reason(d, live, None)
    again = [_openssl_verify(d, c, tmp_path) for c in answers]
    assert [v.returncode == 0 for v in again] == [False, False, True], again
    # The node keeps the one certificate its register records; the CA store agrees.
    assert d.live_serials("customer", device.device_id) == [live]
    attack_report.record(
        case=f"{CATEGORY}/superseded-answers-and-block",
        category=CATEGORY,
        attack="three serverkeygen answers for one device kept by an attacker (keys and "
        "certificates), then `ztpki node block` of the device",
        observed="the two superseded certificates revoked (superseded) at the customer CA "
        "system, the live one on hold (certificateHold) after the block: `openssl verify "
        "-crl_check` with the exported CRL refuses all three; after `unblock` only the live "
        f"one verifies again; {d.serve_next_device()}",
        verdict="contained",
    )


def test_refused_retired_device_enrolls_again(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    key, temp = device.key, device.certificate
    operational = _serverkeygen(d, key, temp, device.device_id)
    retired = d.operator(
        "node", "retire", "--dir", str(d.node_dir), device.device_id, "--reason", "keyCompromise"
    )
    assert retired.status == 0, retired.err
    _wait_reason(d, serial_hex(operational), "keyCompromise")
    before = d.snapshot()
    obs = _ask(d, key, temp, device.device_id)
    assert obs.status == 403 and "retired" in obs.text, obs.summary()
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "retired")])
    attack_report.record(
        case=f"{CATEGORY}/retired-device-enrolls-again",
        category=CATEGORY,
        attack="serverkeygen with the genuine temporary certificate of a device the operator "
        "retired (`ztpki node retire --reason keyCompromise`)",
        observed=f"{obs.summary()}; its certificate revoked (keyCompromise) at the CA system; "
        f"{checked}; {d.serve_next_device()}",
        verdict="refused",
    )


def test_refused_retire_with_a_hold_reason(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    before = d.snapshot()
    done = d.operator(
        "node", "retire", "--dir", str(d.node_dir), device.device_id, "--reason", "certificateHold"
    )
    assert done.status != 0 and "certificateHold" in done.err, done
    checked = d.check_unchanged(before, unaudited_because="a usage error changes nothing")
    attack_report.record(
        case=f"{CATEGORY}/retire-with-hold-reason",
        category=CATEGORY,
        attack="`ztpki node retire --reason certificateHold`: a retirement that the CA could "
        "later release",
        observed=f"usage error (exit {done.status}): the reason is not among the choices; "
        f"{checked}",
        verdict="refused",
    )
