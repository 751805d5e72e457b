"""Attacks on the node's CMP front end (/.well-known/cmp, RFC 9483): forged and replayed
messages, confirmations of someone else's certificate, and identities that do not match.

Messages openssl would never send are built with ztpki's own codec and posted over real TLS
to the deployment's node. After each case: the CMP answer (an error message with its
PKIFailureInfo bit, signed by the node), the register, audit trail and CA records unchanged
except for what the case says, and a legitimate device still served.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.attacks.attack_deployment import Deployment, DeviceUnderTest
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import https_context, https_request
from tests.support.cmp_messages import cert_conf, ir_body, refusal, request_header, signed

from ztpki.pki.keys import PrivateKey
from ztpki.protocol.cmp import (
    CMP_CONTENT_TYPE,
    AlgorithmId,
    BodyType,
    CertRepBody,
    FailInfo,
    Header,
    PKIMessage,
    certificate_hash,
    decode_message,
    encode_message,
    protection_certificate,
    verify_protection,
)

pytestmark = pytest.mark.timeout(240)

CATEGORY = "cmp"
PATH = "/.well-known/cmp"


def _record(report: AttackReport, case: str, attack: str, observed: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}", category=CATEGORY, attack=f"CMP: {attack}",
        observed=observed, verdict="refused",
    )  # fmt: skip


def _post(
    d: Deployment,
    body: bytes,
    *,
    key: PrivateKey | None = None,
    chain: Sequence[x509.Certificate] = (),
) -> PKIMessage:
    context = https_context(key=key, chain=chain, anchors=d.node_anchors)
    observed = https_request(
        d.node_address, "POST", PATH, context=context, body=body,
        headers={"Content-Type": CMP_CONTENT_TYPE}, transcript=d.transcript,
    )  # fmt: skip
    assert observed.status == 200, observed.summary()
    answer = decode_message(observed.body)
    verify_protection(answer, protection_certificate(answer))  # the node signs its refusals too
    return answer


def _refused(answer: PKIMessage, fail: FailInfo, phrase: str) -> str:
    bits, text = refusal(answer)
    assert bits == {fail} and phrase in text, (bits, text)
    return f"error message, PKIFailureInfo {fail.wire_name}: {text}"


def _issued(d: Deployment, device: DeviceUnderTest) -> tuple[Header, PKIMessage]:
    """A legitimate ir of device, answered: the certificate waits for its certConf."""
    header = request_header(device.certificate)
    ip = _post(d, signed(device.key, device.certificate, header, ir_body(device.device_id)))
    assert isinstance(ip.body, CertRepBody) and ip.body.responses[0].certificate_der
    return header, ip


def test_fail_replayedir_body(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    header = request_header(device.certificate)
    ir = signed(device.key, device.certificate, header, ir_body(device.device_id))
    assert isinstance(_post(d, ir).body, CertRepBody)
    before = d.snapshot()
    observed = _refused(_post(d, ir), FailInfo.TRANSACTION_ID_IN_USE, "used before")
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "used before")])
    _record(
        attack_report, "replayed-ir",
        "an ir captured on the wire (valid signature of the device) sent again",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_forged_protection(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    d.reserve(1)
    before = d.snapshot()
    thief = ec.generate_private_key(ec.SECP256R1())
    forged = signed(
        thief, device.certificate, request_header(device.certificate), ir_body(device.device_id)
    )
    observed = _refused(_post(d, forged), FailInfo.BAD_MESSAGE_CHECK, "does not verify")
    checked = d.check_unchanged(before, unaudited_because="the signer proved no identity")
    _record(
        attack_report, "forged-protection",
        "an ir carrying a device's (public) temporary certificate in extraCerts, signed with "
        "another key",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_mac_protection(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    d.reserve(1)
    before = d.snapshot()
    der = device.certificate.public_bytes(serialization.Encoding.DER)
    pbm = AlgorithmId("1.2.840.113533.7.66.13", b"\x05\x00")
    header = request_header(device.certificate, protection_alg=pbm)
    body = encode_message(header, ir_body(device.device_id), protection=os.urandom(20),
                          extra_certs=(der,))  # fmt: skip
    observed = _refused(_post(d, body), FailInfo.BAD_MESSAGE_CHECK, "MAC-based protection")
    checked = d.check_unchanged(before, unaudited_because="the signer proved no identity")
    _record(
        attack_report, "mac-protection",
        "an ir protected by a password-based MAC (a guessed or leaked shared secret) instead "
        "of the device's signature",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_certconf_of_another_device(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    victim, attacker = d.take_device(), d.take_device()
    header, ip = _issued(d, victim)
    assert isinstance(ip.body, CertRepBody)
    issued = x509.load_der_x509_certificate(ip.body.responses[0].certificate_der or b"")
    before = d.snapshot()
    follow, conf = cert_conf(header, ip, certificate_hash(issued))
    stolen = replace(follow, sender=attacker.certificate.subject)
    answer = _post(d, signed(attacker.key, attacker.certificate, stolen, conf))
    observed = _refused(answer, FailInfo.NOT_AUTHORIZED, "protected the request")
    checked = d.check_unchanged(
        before, audited=[(attacker.device_id, "refused", "protected the request")]
    )
    _record(
        attack_report, "certconf-of-another-device",
        "a genuine device confirms another device's certificate (its transactionID, its "
        "certHash and the node's nonce, all seen on the wire) with its own signature",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_certconf_with_a_wrong_hash(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    header, ip = _issued(d, device)
    before = d.snapshot()
    follow, conf = cert_conf(header, ip, b"\x00" * 32)
    answer = _post(d, signed(device.key, device.certificate, follow, conf))
    observed = _refused(answer, FailInfo.BAD_CERT_ID, "nothing confirmed")
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "certHash")])
    _record(
        attack_report, "certconf-wrong-hash",
        "a certConf naming a certificate that was not issued in the transaction (wrong "
        "certHash): a device must not confirm what it did not receive",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_signer_other_than_tls_client(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device, other = d.take_device(), d.take_device()
    before = d.snapshot()
    body = signed(device.key, device.certificate, request_header(device.certificate),
                   ir_body(device.device_id))  # fmt: skip
    answer = _post(d, body, key=other.key, chain=[other.certificate])
    observed = _refused(answer, FailInfo.NOT_AUTHORIZED, "TLS client certificate")
    checked = d.check_unchanged(
        before, audited=[(device.device_id, "refused", "TLS client certificate")]
    )
    _record(
        attack_report, "signer-not-tls-client",
        "a CMP message signed by one device sent over a TLS connection authenticated as "
        "another (two identities in one request)",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_unknown_factory(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    d.reserve(1)
    before = d.snapshot()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    fake = (
        x509.CertificateBuilder().subject_name(device.certificate.subject)
        .issuer_name(device.certificate.issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now.replace(year=now.year + 1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    answer = _post(d, signed(key, fake, request_header(fake), ir_body(device.device_id)))
    observed = _refused(answer, FailInfo.SIGNER_NOT_TRUSTED, "")
    checked = d.check_unchanged(before, unaudited_because="not a certificate of a known factory")
    _record(
        attack_report, "unknown-factory",
        "an ir signed by a look-alike temporary certificate (the device's subject and issuer "
        "name) from a CA the node was never given",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_temporary_certificate_after_cmp_customization(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    header, ip = _issued(d, device)
    assert isinstance(ip.body, CertRepBody)
    issued = x509.load_der_x509_certificate(ip.body.responses[0].certificate_der or b"")
    follow, conf = cert_conf(header, ip, certificate_hash(issued))
    done = _post(d, signed(device.key, device.certificate, follow, conf))
    assert done.body.type is BodyType.PKI_CONF
    before = d.snapshot()
    again = signed(device.key, device.certificate, request_header(device.certificate),
                    ir_body(device.device_id))  # fmt: skip
    observed = _refused(_post(d, again), FailInfo.NOT_AUTHORIZED, "already customized")
    checked = d.check_unchanged(
        before, audited=[(device.device_id, "refused", "already customized")]
    )
    _record(
        attack_report, "temporary-after-customization",
        "a clone holding a device's temporary key asks again over CMP after the device "
        "customized itself over CMP (ir + certConf)",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_malformed_message(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    d.reserve(1)
    before = d.snapshot()
    answers = [_post(d, data) for data in (b"", b"\x30\x80\x00\x00", os.urandom(512))]
    observed = "; ".join(_refused(a, FailInfo.BAD_DATA_FORMAT, "") for a in answers)
    checked = d.check_unchanged(before, unaudited_because="no message, no identity")
    _record(
        attack_report, "malformed-message",
        "an empty body, an indefinite-length (BER) SEQUENCE and 512 random bytes as "
        "application/pkixcmp",
        f"{observed[:300]}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip
