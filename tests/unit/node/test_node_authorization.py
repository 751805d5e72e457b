"""The authorization module's decision table: one register row, one identity, one request."""

from __future__ import annotations

from dataclasses import replace

import pytest
from node_pki import NOW, PKI, leaf

from ztpki.node.authentication import ClientIdentity
from ztpki.node.authorization import (
    Action,
    EnrollmentContext,
    InProgress,
    Operation,
    RefusalReason,
    Refused,
    decide,
    should_confirm,
)
from ztpki.store.records import DeviceState, RegisteredDevice

PKI_ = PKI.create()
_, TEMP_CERT = PKI_.temporary("d1")
_, OP_CERT = leaf(PKI_.operational, "d1")
TEMP = PKI_.identity(TEMP_CERT)
OP = PKI_.identity(OP_CERT)
SPKI = "ab" * 32


def row(state: DeviceState, **kw: object) -> RegisteredDevice:
    values: dict[str, object] = {
        "device_id": "d1",
        "state": state,
        "temp_fingerprint": TEMP.fingerprint,
        "manufacturer": None,
        "model": None,
        "batch": None,
        "manifest_id": None,
        "issued_serial": None,
        "issued_spki": None,
        "issued_certificate_der": None,
        "issued_chain_der": (),
        "blocked_from": None,
        "lease_token": None,
        "lease_expires": None,
        "previous_state": None,
        "updated_at": NOW,
    }
    if state in (DeviceState.ISSUED, DeviceState.CUSTOMIZED):
        values.update(issued_serial=OP.serial, issued_spki=SPKI, issued_certificate_der=b"x")
    values.update(kw)
    return RegisteredDevice(**values)  # type: ignore[arg-type]


def ctx(operation: Operation = Operation.SIMPLEENROLL, **kw: object) -> EnrollmentContext:
    values: dict[str, object] = {
        "operation": operation,
        "label": "default",
        "csr_device_id": "d1",
        "csr_spki": "cd" * 32,
    }
    values.update(kw)
    return EnrollmentContext(**values)  # type: ignore[arg-type]


def refusal(
    device: RegisteredDevice | None, identity: ClientIdentity, context: EnrollmentContext
) -> RefusalReason:
    with pytest.raises(Refused) as refused:
        decide(device, identity, context)
    return refused.value.reason


def test_ok_listed_device_is_issued() -> None:
    decision = decide(row(DeviceState.LISTED), TEMP, ctx())
    assert decision.action is Action.ISSUE and not decision.reissue
    assert decision.allowed_from == {DeviceState.LISTED}  # only the state it was decided on
    assert decision.new_state is DeviceState.ISSUED


@pytest.mark.parametrize(
    ("case", "device", "context", "reason"),
    [
        ("fail-unknown", None, ctx(), RefusalReason.UNKNOWN),
        (
            "fail-blocked",
            row(DeviceState.BLOCKED, blocked_from=DeviceState.LISTED),
            ctx(),
            RefusalReason.BLOCKED,
        ),
        (
            "fail-fingerprint",
            row(DeviceState.LISTED, temp_fingerprint="00" * 32),
            ctx(),
            RefusalReason.FINGERPRINT_MISMATCH,
        ),
        ("fail-customized", row(DeviceState.CUSTOMIZED), ctx(), RefusalReason.CUSTOMIZED),
        (
            "fail-renewal-in-flight",
            row(
                DeviceState.ISSUING,
                previous_state=DeviceState.CUSTOMIZED,
                lease_token="t",
                lease_expires=NOW,
            ),
            ctx(),
            RefusalReason.CUSTOMIZED,
        ),
        (
            "fail-subject",
            row(DeviceState.LISTED),
            ctx(csr_device_id="d2"),
            RefusalReason.SUBJECT_MISMATCH,
        ),
        (
            "fail-no-subject",
            row(DeviceState.LISTED),
            ctx(csr_device_id=None),
            RefusalReason.SUBJECT_MISMATCH,
        ),
        (
            "fail-reenroll-with-temporary",
            row(DeviceState.LISTED),
            ctx(Operation.SIMPLEREENROLL),
            RefusalReason.WRONG_OPERATION,
        ),
        (
            "fail-other-label",
            row(DeviceState.ISSUED),
            ctx(issued_label="meters"),
            RefusalReason.LABEL_MISMATCH,
        ),
        (
            "fail-other-label-after-abort",
            row(DeviceState.LISTED, issuance_label="meters"),
            ctx(),
            RefusalReason.LABEL_MISMATCH,
        ),
        (
            "fail-other-label-at-takeover",
            row(
                DeviceState.ISSUING,
                previous_state=DeviceState.LISTED,
                lease_token="t",
                lease_expires=NOW,
                issuance_label="meters",
            ),
            ctx(lease_expired=True),
            RefusalReason.LABEL_MISMATCH,
        ),
        (
            "fail-other-label-remembered-over-certificate",
            row(DeviceState.ISSUED, issuance_label="meters"),
            ctx(issued_label="default"),
            RefusalReason.LABEL_MISMATCH,
        ),
    ],
)
def test_fail_temporary_refusals(
    case: str, device: RegisteredDevice | None, context: EnrollmentContext, reason: RefusalReason
) -> None:
    assert refusal(device, TEMP, context) is reason


def test_ok_remembered_label_is_retried_there() -> None:
    # The negative control of the label refusals: under its own label the device goes on.
    after_abort = decide(
        row(DeviceState.LISTED, issuance_label="meters"), TEMP, ctx(label="meters")
    )
    assert after_abort.action is Action.ISSUE
    crashed = row(
        DeviceState.ISSUING,
        previous_state=DeviceState.LISTED,
        lease_token="t",
        lease_expires=NOW,
        issuance_label="meters",
    )
    taken_over = decide(crashed, TEMP, ctx(label="meters", lease_expired=True))
    assert taken_over.action is Action.ISSUE and taken_over.reissue


def test_ok_fingerprint_not_recorded_is_not_checked() -> None:
    assert (
        decide(row(DeviceState.LISTED, temp_fingerprint=None), TEMP, ctx()).action is Action.ISSUE
    )


def test_ok_issued_same_key_is_redelivered_other_key_reissued() -> None:
    assert decide(row(DeviceState.ISSUED), TEMP, ctx(csr_spki=SPKI)).action is Action.REDELIVER
    again = decide(row(DeviceState.ISSUED), TEMP, ctx())
    assert again.action is Action.ISSUE and again.reissue
    # serverkeygen never redelivers: there is no stored key to deliver.
    keygen = decide(row(DeviceState.ISSUED), TEMP, ctx(Operation.SERVERKEYGEN, csr_spki=SPKI))
    assert keygen.action is Action.ISSUE and keygen.reissue


def test_fail_issuing_means_retry() -> None:
    device = row(
        DeviceState.ISSUING, previous_state=DeviceState.LISTED, lease_token="t", lease_expires=NOW
    )
    with pytest.raises(InProgress) as deferred:
        decide(device, TEMP, ctx())
    assert deferred.value.retry_after == 1


@pytest.mark.parametrize("previous", [DeviceState.LISTED, DeviceState.ISSUED])
def test_ok_expired_lease_is_taken_over_and_supersedes(previous: DeviceState) -> None:
    """A node crashed mid-issuance: issue anew, superseding whatever it may have issued."""
    base = row(DeviceState.ISSUED) if previous is DeviceState.ISSUED else row(DeviceState.LISTED)
    device = replace(
        base, state=DeviceState.ISSUING, previous_state=previous, lease_token="t", lease_expires=NOW
    )
    decision = decide(device, TEMP, ctx(csr_spki=SPKI, lease_expired=True))
    assert decision.action is Action.ISSUE and decision.reissue  # never a redelivery
    assert decision.allowed_from == {previous}


def test_ok_expired_renewal_is_taken_over_only_by_the_operational_certificate() -> None:
    device = row(DeviceState.CUSTOMIZED)
    device = replace(
        device,
        state=DeviceState.ISSUING,
        previous_state=DeviceState.CUSTOMIZED,
        lease_token="t",
        lease_expires=NOW,
    )
    decision = decide(device, OP, ctx(Operation.SIMPLEREENROLL, lease_expired=True))
    assert (
        decision.allowed_from == {DeviceState.CUSTOMIZED}
        and decision.new_state is DeviceState.CUSTOMIZED
    )
    assert refusal(device, TEMP, ctx(lease_expired=True)) is RefusalReason.CUSTOMIZED


def test_ok_confirmation_only_for_the_current_certificate() -> None:
    assert should_confirm(row(DeviceState.ISSUED), OP)
    assert not should_confirm(row(DeviceState.ISSUED), TEMP)
    assert not should_confirm(row(DeviceState.ISSUED, issued_serial="01"), OP)
    assert not should_confirm(row(DeviceState.CUSTOMIZED), OP)
    assert not should_confirm(None, OP)


def test_ok_operational_renewal() -> None:
    decision = decide(row(DeviceState.CUSTOMIZED), OP, ctx(Operation.SIMPLEREENROLL))
    assert decision.action is Action.ISSUE and decision.reissue
    assert decision.allowed_from == {DeviceState.CUSTOMIZED}
    assert decision.new_state is DeviceState.CUSTOMIZED


@pytest.mark.parametrize(
    ("case", "device", "context", "reason"),
    [
        (
            "fail-superseded",
            row(DeviceState.CUSTOMIZED, issued_serial="01"),
            ctx(Operation.SIMPLEREENROLL),
            RefusalReason.SUPERSEDED,
        ),
        ("fail-simpleenroll", row(DeviceState.CUSTOMIZED), ctx(), RefusalReason.WRONG_OPERATION),
        (
            "fail-serverkeygen",
            row(DeviceState.CUSTOMIZED),
            ctx(Operation.SERVERKEYGEN),
            RefusalReason.WRONG_OPERATION,
        ),
        (
            "fail-label",
            row(DeviceState.CUSTOMIZED),
            ctx(Operation.SIMPLEREENROLL, label="meters"),
            RefusalReason.LABEL_MISMATCH,
        ),
        (
            "fail-subject",
            row(DeviceState.CUSTOMIZED),
            ctx(Operation.SIMPLEREENROLL, csr_device_id="d2"),
            RefusalReason.SUBJECT_MISMATCH,
        ),
        (
            "fail-blocked",
            row(DeviceState.BLOCKED, blocked_from=DeviceState.CUSTOMIZED),
            ctx(Operation.CSRATTRS),
            RefusalReason.BLOCKED,
        ),
    ],
)
def test_fail_operational_refusals(
    case: str, device: RegisteredDevice, context: EnrollmentContext, reason: RefusalReason
) -> None:
    assert refusal(device, OP, context) is reason


def test_ok_lost_renewal_answer_is_redelivered_to_the_old_certificate() -> None:
    device = row(DeviceState.CUSTOMIZED, issued_serial="01")  # renewed: OP is the old one
    assert (
        decide(device, OP, ctx(Operation.SIMPLEREENROLL, csr_spki=SPKI)).action is Action.REDELIVER
    )
    # Negative control: with another key it is just a superseded certificate.
    assert refusal(device, OP, ctx(Operation.SIMPLEREENROLL)) is RefusalReason.SUPERSEDED


def test_ok_identity_fields_are_from_the_certificate() -> None:
    assert replace(TEMP, label="x").device_id == "d1"
