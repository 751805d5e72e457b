"""Attacks on revocation at the CA system (issue 15, "CA system").

The target is the factory CA system of the deployment (`ztpki ca serve`), reached over real TLS
with CA-client credentials registered by `ztpki ca add-client` for each case. A registered
CA-client may revoke only certificates it obtained itself, of CAs and device ids its
entitlement names. Every refused case expects the XML error code and a message naming what
was refused, the certificate still good (`ztpki ca status`), the published CRL
(`cas/NAME/crl.der`) unchanged, the refusal in `ztpki ca refusals` where it is one, and then
a legitimate revocation served.
"""

from __future__ import annotations

import json
import secrets

import pytest
from cryptography import x509
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import RawTLS
from tests.attacks.test_attack_entitlement_ca import _client, _refusals

from ztpki.credentials import client_context
from ztpki.pki.pem import load_certificate_der, serial_hex
from ztpki.protocol.enrollment import (
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentRequest,
    ErrorCode,
    decode_answer,
    encode_request,
)
from ztpki.protocol.framing import HEADER_SIZE, encode_frame
from ztpki.protocol.revocation import (
    RevocationAnswer,
    RevocationReason,
    RevocationRequest,
    decode_revocation_answer,
    encode_revocation_request,
)

pytestmark = pytest.mark.timeout(240)
CATEGORY = "revocation"
KEY_COMPROMISE = RevocationReason.KEY_COMPROMISE


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _exchange(d: Deployment, client: str, payload: bytes) -> bytes:
    credential = d.credential(f"cred-{client}")
    context = client_context(
        key=credential.key,
        chain=list(credential.chain),
        server_anchors=list(credential.trust_anchors),
    )
    with RawTLS(d.address("factory"), context) as conn:
        conn.send(encode_frame(payload))
        length = int.from_bytes(conn.read_exactly(HEADER_SIZE), "big")
        return conn.read_exactly(length)


def _enroll(d: Deployment, client: str, device_id: str) -> x509.Certificate:
    answer = decode_answer(
        _exchange(d, client, encode_request(EnrollmentRequest(_id("e"), device_id)))
    )
    assert isinstance(answer, EnrollmentAnswer), answer
    return load_certificate_der(answer.certificate_der)


def _revoke(
    d: Deployment, client: str, request: RevocationRequest
) -> RevocationAnswer | EnrollmentError:
    return decode_revocation_answer(_exchange(d, client, encode_revocation_request(request)))


def _status(d: Deployment, serial: str, ca: str = "factory") -> str:
    shown = d.cli("ca", "status", "--dir", str(d.factory_dir), "--name", ca, "--serial", serial,
                  "--json", system="factory")  # fmt: skip
    status: str = json.loads(shown.out)["status"]
    return status


def _crl(d: Deployment) -> bytes:
    return (d.factory_dir / "cas" / "factory" / "crl.der").read_bytes()


def _refused(
    d: Deployment,
    client: str,
    request: RevocationRequest,
    *,
    target: x509.Certificate | None,
    code: ErrorCode,
    says: str,
    case: str,
) -> str:
    """Ask; expect the error ``code`` naming ``says``, the target still good and the CRL
    unchanged, and a not-authorized refusal recorded. Returns the observation."""
    crl = _crl(d)
    answer = _revoke(d, client, request)
    assert isinstance(answer, EnrollmentError), f"the CA system revoked: {answer}"
    text = f"XML error {answer.code.value}: {answer.message}"
    d.transcript.add(f"ca revocation {case}", text)
    assert answer.code is code, text
    assert says in answer.message, text
    if target is not None:
        assert _status(d, serial_hex(target)) == "good", "the certificate was revoked"
    assert _crl(d) == crl, "the CRL changed"
    observed = f"{text}; certificate still good; CRL unchanged"
    if code is ErrorCode.NOT_AUTHORIZED:
        last = _refusals(d)[-1]
        assert last["request_id"] == request.request_id and last["reason"] == answer.message
        observed += "; refusal recorded"
    return observed


def _record(report: AttackReport, case: str, attack: str, observed: str) -> None:
    report.record(
        case=f"{CATEGORY}/ca-{case}",
        category=CATEGORY,
        attack=attack,
        observed=observed,
        verdict="refused",
    )


def _control(d: Deployment, client: str, target: x509.Certificate) -> str:
    """The positive control: the owner revokes its own certificate, and it is on the CRL."""
    answer = _revoke(d, client, RevocationRequest(_id("ok"), None, serial_hex(target), None,
                                                  KEY_COMPROMISE))  # fmt: skip
    assert isinstance(answer, RevocationAnswer), answer
    crl = x509.load_der_x509_crl(_crl(d))
    assert crl.get_revoked_certificate_by_serial_number(target.serial_number) is not None
    return "the owner's own revocation served and on the CRL"


def test_fail_client_revokes_another_clients_certificate(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    owner, other = (_client(d, "--ca", "factory") for _ in range(2))
    target = _enroll(d, owner, _id("dev"))
    by_serial = RevocationRequest(_id("atk"), None, serial_hex(target), None, KEY_COMPROMISE)
    observed = _refused(d, other, by_serial, target=target, code=ErrorCode.NOT_AUTHORIZED,
                        says="another CA-client obtained it", case="other-client")  # fmt: skip
    device_id = target.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    held = RevocationRequest(_id("atk"), "factory", None, str(device_id),
                             RevocationReason.CERTIFICATE_HOLD)  # fmt: skip
    _refused(d, other, held, target=target, code=ErrorCode.NOT_AUTHORIZED,
             says="another CA-client obtained it", case="other-client-hold")  # fmt: skip
    observed += "; " + _control(d, owner, target)
    _record(
        attack_report,
        "other-client",
        "a registered CA-client entitled to the same CA revokes (by serial) and holds (by "
        "device id) a certificate another CA-client obtained: a denial of service on a device "
        "it does not serve",
        observed,
    )


def test_fail_client_revokes_outside_its_entitlement(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    client = _client(d, "--ca", "factory")
    device_id = _id("OTHER")
    target = _enroll(d, client, device_id)
    # The operator narrows the client to ACME-* ids: its old certificate is now outside.
    d.cli("ca", "set-client", "--dir", str(d.factory_dir), "--name", client, "--device-ids",
          "ACME-*", system="factory")  # fmt: skip
    serial = serial_hex(target)
    by_serial = RevocationRequest(_id("atk"), None, serial, None, KEY_COMPROMISE)
    observed = _refused(d, client, by_serial, target=target, code=ErrorCode.NOT_AUTHORIZED,
                        says="outside the client's entitlement", case="device-outside")  # fmt: skip
    by_device = RevocationRequest(_id("atk"), None, None, device_id, KEY_COMPROMISE)
    _refused(d, client, by_device, target=target, code=ErrorCode.NOT_AUTHORIZED,
             says=f"may not name device id {device_id!r}", case="device-outside-id")  # fmt: skip
    # A client of another CA only: it may not even learn whether the serial exists there.
    stranger = _client(d, "--ca", "manifests")
    other_ca = RevocationRequest(_id("atk"), "factory", serial, None, KEY_COMPROMISE)
    _refused(d, stranger, other_ca, target=target, code=ErrorCode.NOT_AUTHORIZED,
             says="may not use CA 'factory'", case="other-ca")  # fmt: skip
    d.cli("ca", "set-client", "--dir", str(d.factory_dir), "--name", client, "--device-ids",
          "*", system="factory")  # fmt: skip
    observed += "; " + _control(d, client, target)
    _record(
        attack_report,
        "device-outside",
        "a CA-client revokes a certificate of a device id outside its entitlement (by serial "
        "and by device id), and a client of another CA revokes at this one",
        observed,
    )


def test_fail_revoking_an_unknown_serial(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    client = _client(d, "--ca", "factory")
    unknown = secrets.token_hex(16).lstrip("0")
    request = RevocationRequest(_id("atk"), None, unknown, None, KEY_COMPROMISE)
    observed = _refused(d, client, request, target=None, code=ErrorCode.UNKNOWN_CERTIFICATE,
                        says=f"no certificate with serial {unknown}", case="unknown")  # fmt: skip
    assert _status(d, unknown) == "unknown"
    nobody = RevocationRequest(_id("atk"), None, None, _id("ghost"), KEY_COMPROMISE)
    _refused(d, client, nobody, target=None, code=ErrorCode.UNKNOWN_CERTIFICATE,
             says="holds no live certificate", case="unknown-device")  # fmt: skip
    target = _enroll(d, client, _id("dev"))
    observed += "; " + _control(d, client, target)
    _record(
        attack_report,
        "unknown-serial",
        "a CA-client revokes a serial the CA never issued, and the live certificate of a "
        "device that has none (fishing for a record to create)",
        observed + "; nothing recorded (`ca status`: unknown)",
    )


@pytest.mark.parametrize(
    ("case", "payload", "says"),
    [
        pytest.param(
            "both-targets",
            b"<RevocationRequest xmlns='urn:ztpki:enrollment:1' id='m1'><Serial>0a</Serial>"
            b"<DeviceId>d</DeviceId><Reason>keyCompromise</Reason></RevocationRequest>",
            "DeviceId",
            id="fail-both-targets",
        ),
        pytest.param(
            "remove-from-crl",
            b"<RevocationRequest xmlns='urn:ztpki:enrollment:1' id='m2'><Serial>0a</Serial>"
            b"<Reason>removeFromCRL</Reason></RevocationRequest>",
            "RFC 5280 reason",
            id="fail-remove-from-crl",
        ),
        pytest.param(
            "serial-injection",
            b"<RevocationRequest xmlns='urn:ztpki:enrollment:1' id='m3'>"
            b"<Serial>0a' OR '1'='1</Serial><Reason>keyCompromise</Reason></RevocationRequest>",
            "hexadecimal",
            id="fail-serial-injection",
        ),
        pytest.param(
            "entity",
            b"<!DOCTYPE r [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><RevocationRequest "
            b"xmlns='urn:ztpki:enrollment:1' id='m4'><Serial>&x;</Serial>"
            b"<Reason>keyCompromise</Reason></RevocationRequest>",
            "",
            id="fail-entity",
        ),
    ],
)
def test_fail_malformed_revocation_xml(
    deployment: Deployment, attack_report: AttackReport, case: str, payload: bytes, says: str
) -> None:
    d = deployment
    client = _client(d, "--ca", "factory")
    crl = _crl(d)
    answer = decode_revocation_answer(_exchange(d, client, payload))
    assert isinstance(answer, EnrollmentError), answer
    text = f"XML error {answer.code.value}: {answer.message}"
    d.transcript.add(f"ca revocation malformed {case}", text)
    assert answer.code is ErrorCode.MALFORMED, text
    assert says in answer.message and "root:" not in answer.message, text
    assert _crl(d) == crl
    target = _enroll(d, client, _id("dev"))
    _record(
        attack_report,
        f"malformed-{case}",
        f"a registered CA-client sends a malformed RevocationRequest ({case})",
        f"{text}; nothing revoked; CRL unchanged; {_control(d, client, target)}",
    )
