"""Attacks on root CA key update (issue 17): genm rootCaCert at the node, a forged root update
at ztpki's CMP client, and the rollover and node commands by a party without the right.

The shared deployment's root is never rolled over here (every other case relies on it): each
case is a refusal, checked to have changed nothing; the rollover itself is exercised in
tests/e2e/test_cmp_rollover.py and tests/unit/casystem/test_ca_rollover.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.attacks.test_attack_cmp import _post, _refused
from tests.support.cmp_messages import request_header, signed

from ztpki.device.cmp_root_update import verify_root_update
from ztpki.errors import VerificationFailed
from ztpki.pki.authority import create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.rollover import update_root_key
from ztpki.protocol.cmp import BodyType, FailInfo, GenMsgBody, InfoTypeAndValue
from ztpki.protocol.cmp.root_update import ID_IT_ROOT_CA_CERT, RootUpdateValue, encode_root_update

pytestmark = pytest.mark.timeout(240)

CATEGORY = "cmp-rollover"
DER = serialization.Encoding.DER


def _record(
    report: AttackReport, case: str, attack: str, observed: str, verdict: str = "refused"
) -> None:
    report.record(
        case=f"{CATEGORY}/{case}", category=CATEGORY, attack=f"CMP root update: {attack}",
        observed=observed, verdict=verdict,
    )  # fmt: skip


def _customer_root(d: Deployment) -> x509.Certificate:
    return d.certificates("customer/cas/croot/ca.pem")[0]


def _look_alike(root: x509.Certificate) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed root an attacker made with the customer root's very name."""
    key = generate_private_key(KeySpec.EC_P256)
    now = datetime.now(UTC)
    return create_self_signed_ca(key, root.subject, now=now, validity=timedelta(days=30)), key


def test_fail_genm_root_update_for_a_look_alike_root(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    d.reserve(1)
    fake, _ = _look_alike(_customer_root(d))
    before = d.snapshot()
    item = InfoTypeAndValue(ID_IT_ROOT_CA_CERT, fake.public_bytes(DER))
    body = GenMsgBody(BodyType.GENM, (item,))
    message = signed(device.key, device.certificate, request_header(device.certificate), body)
    answer = _post(d, message, key=device.key, chain=[device.certificate])
    observed = _refused(answer, FailInfo.BAD_REQUEST, "does not serve")
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "does not serve")])
    _record(
        attack_report, "genm-look-alike-root",
        "a genm rootCaCert naming a root the attacker made with the customer root's name, to be "
        "answered with a root update (newWithNew) as if it were an old root of the customer",
        f"{observed}; {checked}; {d.serve_next_device()}",
    )  # fmt: skip


def test_fail_forged_root_update_at_the_client(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    trusted = _customer_root(d)
    fake, fake_key = _look_alike(trusted)
    # A man in the middle (or a hostile node) answers genm rootCaCert with a "rollover" to its
    # own key: newWithNew and a newWithOld it signed itself, both with the customer's name.
    forged = update_root_key(
        fake_key,
        fake,
        generate_private_key(KeySpec.EC_P256),
        now=datetime.now(UTC),
        validity=timedelta(days=60),
    )
    cases = {
        "newWithOld signed by another key": RootUpdateValue(
            forged.new_with_new.public_bytes(DER), forged.new_with_old.public_bytes(DER)
        ),
        "no newWithOld (a bare newWithNew)": RootUpdateValue(forged.new_with_new.public_bytes(DER)),
    }
    seen = []
    for what, value in cases.items():
        with pytest.raises(VerificationFailed) as refused:
            verify_root_update(trusted, encode_root_update(value), now=datetime.now(UTC))
        seen.append(f"{what}: {refused.value.message}")
    _record(
        attack_report, "forged-root-update",
        "an answer to genm rootCaCert that swaps in the attacker's root: newWithNew with a "
        "newWithOld the customer's root never signed, or newWithNew alone",
        "ztpki's CMP client refuses (VerificationFailed) and keeps the root it trusts; "
        + "; ".join(seen),
    )  # fmt: skip


def test_fail_rollover_without_the_ca_systems_passphrase(
    deployment: Deployment, attack_report: AttackReport, tmp_path: Path
) -> None:
    d = deployment
    croot = d.customer_dir / "cas" / "croot"
    before = {p.name: p.read_bytes() for p in croot.iterdir() if p.is_file()}
    wrong = tmp_path / "guess"
    wrong.write_text("a-guessed-passphrase-of-some-length\n")
    result = d.operator(
        "ca", "rollover", "--dir", str(d.customer_dir), "--name", "croot",
        "--passphrase-file", str(wrong),
    )  # fmt: skip
    assert result.status != 0 and "passphrase" in result.err, result
    assert {p.name: p.read_bytes() for p in croot.iterdir() if p.is_file()} == before
    assert not (croot / "rollover.pending").exists() and not (croot / "rollover.tmp").exists()
    _record(
        attack_report, "rollover-without-passphrase",
        "someone with write access to the CA-system directory but not its passphrase runs "
        "`ca rollover` to put a key of their own behind the customer root",
        f"refused before any file was written ({result.err.strip().splitlines()[-1]}); "
        "ca.pem, the key and links.pem unchanged, no rollover staged",
    )  # fmt: skip


def test_fail_node_update_ca_dropping_the_served_root(
    deployment: Deployment, attack_report: AttackReport, tmp_path: Path
) -> None:
    d = deployment
    served = d.node_dir / "ca" / "default.pem"
    before = served.read_bytes()
    fake, _ = _look_alike(_customer_root(d))
    issuing = d.certificates("customer/cas/devices/ca.pem")[0]
    swapped = tmp_path / "swapped.pem"
    swapped.write_bytes(
        issuing.public_bytes(serialization.Encoding.PEM)
        + fake.public_bytes(serialization.Encoding.PEM)
    )
    result = d.operator(
        "node", "update-ca", "--dir", str(d.node_dir), "--label", "default",
        "--customer-chain", str(swapped),
    )  # fmt: skip
    assert result.status != 0 and "leaves out the root" in result.err, result
    assert served.read_bytes() == before
    _record(
        attack_report, "update-ca-drops-root",
        "a tampered chain file given to `node update-ca` that replaces the customer root with a "
        "look-alike, so devices trusting the real root could no longer follow a rollover",
        f"refused ({result.err.strip().splitlines()[-1][:160]}); the label's chain file unchanged",
    )  # fmt: skip
