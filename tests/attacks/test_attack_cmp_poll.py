"""Attacks on CMP polling (pollReq, RFC 9483 section 4.4): another device polls for a
transaction that is not its own, to be handed that device's certificate.

Built with ztpki's own codec and posted over real TLS to the deployment's node; after the
case the register, audit trail and CA records are unchanged except for the refusal's audit
entry, and a legitimate device is still served.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.attacks.test_attack_cmp import _issued, _post, _record, _refused
from tests.support.cmp_messages import signed

from ztpki.protocol.cmp import FailInfo, PollReqBody

pytestmark = pytest.mark.timeout(240)


def test_fail_pollreq_for_another_devices_transaction(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    victim, thief = d.take_device(), d.take_device()
    header, _ = _issued(d, victim)  # the victim's ir, answered: its certConf is awaited
    before = d.snapshot()
    # The thief saw the victim's transactionID on the wire and polls for it with its own,
    # valid, temporary certificate.
    stolen = replace(
        header, sender=thief.certificate.subject, sender_nonce=b"t" * 16,
        message_time=datetime.now(UTC),
    )  # fmt: skip
    poll = signed(thief.key, thief.certificate, stolen, PollReqBody((0,)))
    observed = _refused(_post(d, poll), FailInfo.NOT_AUTHORIZED, "another certificate")
    checked = d.check_unchanged(
        before, audited=[(thief.device_id, "refused", "another certificate")]
    )
    _record(
        attack_report, "pollreq-hijack",
        "a device polls (pollReq) for another device's transactionID to be sent its certificate",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip
