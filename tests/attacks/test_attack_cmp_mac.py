"""Attacks on CMP's MAC-based protection (RFC 9483 section 4.1.5): the deployment's label
"meters" accepts a shared secret the operator set for a device (`ztpki node set-cmp-secret`).

An attacker guesses the secret and collects answers to guess it offline, uses its own
device's secret for another device, names an iteration count that would keep the node busy,
or replays a verified request. Built with ztpki's codec and posted over real TLS (no client
certificate, as a device with no certificate would). After each case the register, audit
trail and CA records are unchanged except for what the case says, and a legitimate device is
still served.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import https_context, https_request
from tests.attacks.test_attack_cmp import _record, _refused
from tests.support.cmp_messages import ir_body

from ztpki.protocol.cmp import (
    CMP_CONTENT_TYPE,
    CertRepBody,
    FailInfo,
    Header,
    PKIMessage,
    decode_message,
    encode_message,
    protection_certificate,
    verify_protection,
)
from ztpki.protocol.cmp.mac import MacParameters, MacScheme, encode_mac_algorithm, mac_message

pytestmark = pytest.mark.timeout(240)

PATH = "/.well-known/cmp/p/meters"


def _params(iterations: int = 500) -> MacParameters:
    return MacParameters(
        MacScheme.PASSWORD_BASED_MAC, os.urandom(16), iterations, hashes.SHA256, hashes.SHA256
    )


def _with_secret(d: Deployment) -> tuple[str, bytes]:
    """A listed device the operator gave a shared secret (a 0600 file, then the command)."""
    device_id = d.take_device().device_id
    secret = os.urandom(16).hex().encode()
    path = d.root / f"{device_id}.secret"
    path.write_bytes(secret)
    path.chmod(0o600)
    d.cli("node", "set-cmp-secret", "--dir", str(d.node_dir), device_id, "--secret-file", str(path))
    return device_id, secret


def _header(kid: str) -> Header:
    return Header(
        sender=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, kid)]),
        recipient=x509.Name([]), transaction_id=os.urandom(16), sender_nonce=os.urandom(16),
        message_time=datetime.now(UTC), sender_kid=kid.encode(),
    )  # fmt: skip


def _post(d: Deployment, body: bytes) -> tuple[PKIMessage, bytes]:
    """The node's answer, and its bytes."""
    context = https_context(key=None, chain=(), anchors=d.node_anchors)
    observed = https_request(
        d.node_address, "POST", PATH, context=context, body=body,
        headers={"Content-Type": CMP_CONTENT_TYPE}, transcript=d.transcript,
    )  # fmt: skip
    assert observed.status == 200, observed.summary()
    return decode_message(observed.body), observed.body


def _signed_not_macd(answer: PKIMessage) -> str:
    # A refusal MAC'd under the device's secret would hand the guesser material to test
    # guesses offline: it must be signed by the node's key.
    verify_protection(answer, protection_certificate(answer))
    return "the refusal is signed by the node, not MAC'd under the device's secret"


def test_fail_guessed_shared_secret(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device_id, _ = _with_secret(d)
    d.reserve(1)
    before = d.snapshot()
    guess = mac_message(_header(device_id), ir_body(device_id), _params(), b"password1234567890")
    answer, _ = _post(d, guess)
    observed = _refused(answer, FailInfo.BAD_MESSAGE_CHECK, "does not verify")
    oracle = _signed_not_macd(answer)
    checked = d.check_unchanged(before, unaudited_because="the sender proved no secret")
    _record(
        attack_report, "mac-guessed-secret",
        "an ir MAC-protected with a guessed shared secret for a device that has one, also "
        "to collect MAC'd answers for an offline guess",
        f"{observed}; {oracle}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_own_secret_for_another_device(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    victim, _ = _with_secret(d)
    thief, secret = _with_secret(d)
    d.reserve(1)
    before = d.snapshot()
    # senderKID names the victim; the MAC is made with the thief's own secret.
    answer, _ = _post(d, mac_message(_header(victim), ir_body(victim), _params(), secret))
    first = _refused(answer, FailInfo.BAD_MESSAGE_CHECK, "does not verify")
    # Honest about who it is, asking for the victim's name in the template.
    answer, _ = _post(d, mac_message(_header(thief), ir_body(victim), _params(), secret))
    second = _refused(answer, FailInfo.NOT_AUTHORIZED, "subject mismatch")
    checked = d.check_unchanged(before, audited=[(thief, "refused", "subject mismatch")])
    _record(
        attack_report, "mac-another-devices-secret",
        "a device's own shared secret used for another device (senderKID the victim's), then "
        "the victim's name asked for under its own senderKID",
        f"{first}; then {second}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_iteration_count_to_keep_the_node_busy(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device_id, _ = _with_secret(d)
    d.reserve(1)
    before = d.snapshot()
    # 2**31 hashes would take the node hours; the tag is random, naming the count is free.
    header = replace(_header(device_id), protection_alg=encode_mac_algorithm(_params(2**31)))
    answer, _ = _post(d, encode_message(header, ir_body(device_id), protection=os.urandom(32)))
    observed = _refused(answer, FailInfo.BAD_ALG, "iteration count 2147483648")
    checked = d.check_unchanged(before, unaudited_because="refused before any key was derived")
    _record(
        attack_report, "mac-iteration-count",
        "a PasswordBasedMac naming 2^31 iterations, so that the node derives keys for hours",
        f"{observed}; answered at once; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_replayed_mac_protected_ir(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device_id, secret = _with_secret(d)
    ir = mac_message(_header(device_id), ir_body(device_id), _params(), secret)
    answer, _ = _post(d, ir)
    assert isinstance(answer.body, CertRepBody) and answer.body.responses[0].certificate_der
    d.reserve(1)
    before = d.snapshot()
    answer, _ = _post(d, ir)  # seen on the wire, sent again
    observed = _refused(answer, FailInfo.TRANSACTION_ID_IN_USE, "used before")
    checked = d.check_unchanged(before, audited=[(device_id, "refused", "used before")])
    _record(
        attack_report, "mac-replayed-ir",
        "a verified MAC-protected ir replayed word for word, for a second certificate",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip
