"""Attacks on OCSP after a root CA key rollover (casystem/rollover_ocsp.py): CertIDs that mix
or borrow the issuer hashes of a rolled-over root, the old key's responder asked past its
life, and a responder certificate planted where the old key's is kept.

The shared deployment's root is never rolled over (every other case relies on it): each case
rolls a CA system of its own, in-process with the real CLI, and asks the CA system's real
responder (OCSPResponder with the issuance store and the old key's responder, as
`ca serve --http-listen` builds it). Every case is a refusal, checked to have signed nothing
and changed nothing in the issuance store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from tests.attacks.attack_report import AttackReport

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.ocsp_responder import OCSPResponder
from ztpki.casystem.operations import open_store
from ztpki.casystem.rollover_ocsp import CERT_FILE, KEY_FILE, PREVIOUS_KEYS, previous_responders
from ztpki.cli import main
from ztpki.errors import ConfigurationError
from ztpki.pki.authority import create_self_signed_ca
from ztpki.pki.keys import KeySpec, encode_pkcs8_pem, generate_private_key
from ztpki.pki.ocsp import issue_responder_certificate
from ztpki.pki.ocsp_der import public_key_bits
from ztpki.pki.pem import certificates_pem

CATEGORY = "rollover-ocsp"
PASSPHRASE = "rollover-ocsp-attack-passphrase"


def _record(report: AttackReport, case: str, attack: str, observed: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}", category=CATEGORY, attack=f"OCSP after a rollover: {attack}",
        observed=observed, verdict="refused",
    )  # fmt: skip


@dataclass
class RolledSystem:
    directory: CASystemDirectory
    old_root: x509.Certificate
    new_root: x509.Certificate
    devices: x509.Certificate  # a subordinate CA the old key certified

    def responder(self, *, now: datetime) -> OCSPResponder:
        """The CA system's responder, as `ca serve --http-listen` builds it."""
        names = self.directory.ca_names()
        secret = PASSPHRASE.encode()
        return OCSPResponder(
            {n: self.directory.load_authority(n, passphrase=secret) for n in names},
            open_store(self.directory),
            now=now,
            previous={
                n: previous_responders(self.directory, n, passphrase=secret, now=now) for n in names
            },
        )

    def state(self) -> tuple[int, int]:
        with open_store(self.directory) as store:
            return store.count(), store.revocation_version("croot")


@pytest.fixture
def rolled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RolledSystem:
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", PASSPHRASE)
    root = str(tmp_path / "ca")
    assert main(["ca", "init", "--dir", root, "--name", "croot"]) == 0
    assert main(["ca", "init", "--dir", root, "--name", "devices", "--parent", "croot"]) == 0
    directory = CASystemDirectory(tmp_path / "ca")
    old_root = directory.certificate("croot")
    assert main(["ca", "rollover", "--dir", root, "--name", "croot",
                 "--validity-days", "3651"]) == 0  # fmt: skip
    return RolledSystem(
        directory, old_root, directory.certificate("croot"), directory.certificate("devices")
    )


def _cert_id(name_of: x509.Certificate, key_of: x509.Certificate, serial: int) -> bytes:
    """An RFC 5019 request whose CertID takes its name hash and its key hash from two
    certificates (SHA-1, as openssl sends)."""
    name_hash = hashlib.sha1(name_of.subject.public_bytes()).digest()
    key_hash = hashlib.sha1(public_key_bits(key_of)).digest()
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, serial, hashes.SHA1()
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def _status(body: bytes) -> ocsp.OCSPResponseStatus:
    return ocsp.load_der_ocsp_response(body).response_status


def test_fail_cert_ids_mixing_a_rolled_roots_hashes(
    rolled: RolledSystem, attack_report: AttackReport
) -> None:
    now = datetime.now(UTC)
    responder = rolled.responder(now=now)
    serial = rolled.devices.serial_number
    # The control: the old key's own CertID for what it certified is answered (good).
    control = ocsp.load_der_ocsp_response(
        responder.answer(_cert_id(rolled.old_root, rolled.old_root, serial), now=now).body
    )
    assert control.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert control.certificate_status is ocsp.OCSPCertStatus.GOOD
    before = rolled.state()
    stranger_key = generate_private_key(KeySpec.EC_P256)
    stranger = create_self_signed_ca(
        stranger_key, rolled.old_root.subject, now=now, validity=timedelta(days=30)
    )
    forged = {
        "the subordinate's name with the old root's key": (rolled.devices, rolled.old_root),
        "the subordinate's name with the new root's key": (rolled.devices, rolled.new_root),
        "the root's name with the subordinate's key": (rolled.old_root, rolled.devices),
        "the root's name with a key the CA never had": (rolled.old_root, stranger),
    }
    seen = []
    for what, (name_of, key_of) in forged.items():
        answer = responder.answer(_cert_id(name_of, key_of, serial), now=now)
        assert _status(answer.body) is ocsp.OCSPResponseStatus.UNAUTHORIZED, what
        seen.append(what)
    assert rolled.state() == before
    _record(
        attack_report, "mixed-cert-id",
        "CertIDs that pair the issuer name hash of one key of a rolled-over root (or of the CA "
        "it certified) with the key hash of another, or with a key the CA never had, hoping to "
        "get a signed 'good' for an issuer that does not exist",
        "every one answered `unauthorized`, unsigned (" + "; ".join(seen) + "); the old key's "
        "own CertID answered good (control); issuance store unchanged",
    )  # fmt: skip


def test_fail_old_keys_responder_asked_past_its_life(
    rolled: RolledSystem, attack_report: AttackReport
) -> None:
    now = datetime.now(UTC)
    responder = rolled.responder(now=now)
    (kept,) = previous_responders(
        rolled.directory, "croot", passphrase=PASSPHRASE.encode(), now=now
    )
    later = kept.certificate.not_valid_after_utc + timedelta(seconds=1)
    request = _cert_id(rolled.old_root, rolled.old_root, rolled.devices.serial_number)
    assert _status(responder.answer(request, now=now).body) is ocsp.OCSPResponseStatus.SUCCESSFUL
    answer = responder.answer(request, now=later)
    assert _status(answer.body) is ocsp.OCSPResponseStatus.UNAUTHORIZED
    # And a service started after it has expired does not load it at all.
    assert (
        previous_responders(rolled.directory, "croot", passphrase=PASSPHRASE.encode(), now=later)
        == ()
    )
    _record(
        attack_report, "expired-old-responder",
        "a relying party (or a replaying attacker) asks about the old key's certificates after "
        "the old key's responder certificate, which nothing can renew, has expired",
        "`unauthorized`: no answer is signed by an expired responder (one would carry a "
        "nextUpdate before its thisUpdate); a service started later does not load it",
    )  # fmt: skip


def test_fail_planted_old_key_responder(rolled: RolledSystem, attack_report: AttackReport) -> None:
    (folder,) = (rolled.directory.ca_dir("croot") / PREVIOUS_KEYS).iterdir()
    now = datetime.now(UTC)
    # Write access to the CA directory, not the old key (deleted): a look-alike root of the
    # attacker's issues a responder certificate, planted with its key (under the passphrase).
    fake_key = generate_private_key(KeySpec.EC_P256)
    fake_root = create_self_signed_ca(
        fake_key, rolled.old_root.subject, now=now, validity=timedelta(days=30)
    )
    planted_key = generate_private_key(KeySpec.EC_P256)
    planted = issue_responder_certificate(fake_root, fake_key, planted_key, now=now)
    (folder / CERT_FILE).write_bytes(certificates_pem([planted]))
    (folder / KEY_FILE).write_bytes(encode_pkcs8_pem(planted_key, passphrase=PASSPHRASE.encode()))
    before = rolled.state()
    with pytest.raises(ConfigurationError, match="issued by none of the earlier keys") as refused:
        rolled.responder(now=now)
    assert rolled.state() == before
    _record(
        attack_report, "planted-old-responder",
        "someone with write access to the CA-system directory replaces the old key's responder "
        "certificate (and key) with one their own look-alike root issued, to sign OCSP answers "
        "for the old key's certificates",
        f"the responder does not start ({refused.value.message[:120]}...): a responder "
        "certificate is loaded only if an earlier key of the CA (links.pem) signed it",
    )  # fmt: skip
