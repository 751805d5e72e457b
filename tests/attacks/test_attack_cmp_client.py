"""Attacks on what cmpclient added to the node's CMP front end: rr (a device revoking a
certificate), genm, and the centrally generated key in an ip.

Each request is built with ztpki's own codec and posted over real TLS to the deployment's
node; after each: the signed CMP error (its PKIFailureInfo bit), the register, audit trail
and CA records unchanged except for what the case says, and a legitimate device still served.
"""

from __future__ import annotations

import asyncio

import pytest
from cryptography import x509
from tests.attacks.attack_deployment import Deployment, DeviceUnderTest
from tests.attacks.attack_report import AttackReport
from tests.attacks.test_attack_cmp import _post, _refused
from tests.support.cmp_messages import request_header, signed

from ztpki.device.cmp_activation import credentials_of, trust_for
from ztpki.device.cmp_client import CMPClient
from ztpki.device.communication import node_context
from ztpki.errors import MalformedInput
from ztpki.pki.enveloped import open_envelope
from ztpki.protocol.cmp import (
    BodyType,
    FailInfo,
    GenMsgBody,
    InfoTypeAndValue,
    RevDetails,
    RevReqBody,
)
from ztpki.protocol.cmp.central_keygen import delivered_keys

pytestmark = pytest.mark.timeout(240)

CATEGORY = "cmp-client"
PATH = "/.well-known/cmp"


def _record(
    report: AttackReport, case: str, attack: str, observed: str, verdict: str = "refused"
) -> None:
    report.record(
        case=f"{CATEGORY}/{case}", category=CATEGORY, attack=f"CMP: {attack}",
        observed=observed, verdict=verdict,
    )  # fmt: skip


def _rr(device: DeviceUnderTest, target: x509.Certificate, reason: x509.ReasonFlags) -> bytes:
    body = RevReqBody((RevDetails(target.issuer, target.serial_number, reason),))
    return signed(device.key, device.certificate, request_header(device.certificate), body)


def _customized(d: Deployment) -> DeviceUnderTest:
    device = d.take_device()
    assert d.activate(device).action == "activated"
    return device


def test_fail_rr_for_another_devices_certificate(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    attacker, victim = _customized(d), _customized(d)
    before = d.snapshot()
    body = _rr(attacker, victim.certificate, x509.ReasonFlags.key_compromise)
    answer = _post(d, body, key=attacker.key, chain=[attacker.certificate])
    observed = _refused(answer, FailInfo.BAD_CERT_ID, "own certificate only")
    checked = d.check_unchanged(before, audited=[(attacker.device_id, "refused", "own")])
    _record(
        attack_report, "rr-another-device",
        "a customized device signs an rr naming another device's live certificate (issuer "
        "and serial are public) to have it revoked for keyCompromise",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_rr_with_the_temporary_certificate(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    d.reserve(1)
    before = d.snapshot()
    body = _rr(device, device.certificate, x509.ReasonFlags.cessation_of_operation)
    answer = _post(d, body, key=device.key, chain=[device.certificate])
    observed = _refused(answer, FailInfo.NOT_AUTHORIZED, "its manufacturer")
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "manufacturer")])
    _record(
        attack_report, "rr-temporary-certificate",
        "a device still in its temporary phase (or a clone of its factory identity) revokes "
        "the temporary certificate over CMP, to retire the device before its customer has it",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_rr_asking_for_a_hold(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = _customized(d)
    d.reserve(1)
    before = d.snapshot()
    body = _rr(device, device.certificate, x509.ReasonFlags.certificate_hold)
    answer = _post(d, body, key=device.key, chain=[device.certificate])
    observed = _refused(answer, FailInfo.BAD_REQUEST, "holds are the operator")
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "operator")])
    _record(
        attack_report, "rr-hold",
        "a device puts its own certificate on hold (certificateHold), a right the operator "
        "keeps (node block / unblock)",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_genm_for_an_unserved_info_type(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    d.reserve(1)
    before = d.snapshot()
    body = GenMsgBody(BodyType.GENM, (InfoTypeAndValue("1.3.6.1.5.5.7.4.16"),))
    message = signed(device.key, device.certificate, request_header(device.certificate), body)
    answer = _post(d, message, key=device.key, chain=[device.certificate])
    observed = _refused(answer, FailInfo.BAD_REQUEST, "is not served here")
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "not served")])
    _record(
        attack_report, "genm-unserved-info-type",
        "a genm asking the node for an info type it does not serve (signKeyPairTypes), "
        "probing for answers outside the profile",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_contained_central_key_read_by_another_device(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    victim, eavesdropper = d.take_device(), d.take_device()
    memory = victim.memory()
    identity = memory.identity()
    anchors = memory.trust_anchors()
    chain = [victim.certificate]

    async def ask() -> bytes:
        cmp = CMPClient(
            f"https://{d.node.host}:{d.node.port}{PATH}",
            credentials_of(identity),
            trust_for(anchors),
            context=node_context(key=victim.key, chain=chain, anchors=anchors),
        )
        async with cmp:
            enrollment = await cmp.enroll_central()
            return enrollment.transaction.last_answer

    ip = asyncio.run(ask())  # the victim's ip, as a wire tap (or a logging proxy) sees it
    (envelope,) = delivered_keys(ip).values()
    try:
        open_envelope(envelope, eavesdropper.key, eavesdropper.certificate)
    except MalformedInput as exc:
        observed = f"the eavesdropper cannot open the key: {exc.message}"
    else:
        raise AssertionError("another device opened a centrally generated key")
    try:
        # Even with the victim's name and serial on a certificate of its own key.
        open_envelope(envelope, eavesdropper.key, victim.certificate)
    except MalformedInput as exc:
        observed += f"; with the victim's certificate named: {exc.message}"
    else:
        raise AssertionError("another device's key opened the envelope")
    _record(
        attack_report,
        "central-key-eavesdropped",
        "an ip carrying a centrally generated private key (RFC 9483 4.1.6) is captured and "
        "opened with another device's key",
        f"{observed}; {d.serve_next_device()}",
        verdict="contained",
    )
