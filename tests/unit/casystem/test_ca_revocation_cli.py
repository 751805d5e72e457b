"""`ztpki ca revoke | release-hold | crl | status` in-process: every change durable and on the
published CRL, and bad input changes nothing.

The end-to-end tests (tests/e2e/test_casystem_revocation.py) run them beside `ca serve`.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.operations import open_store
from ztpki.cli import main
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields
from ztpki.store.records import CertificateStatus, IssuedCertificate

CA_PASSPHRASE = "cli-test-ca-passphrase"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", CA_PASSPHRASE)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA with two certificates it issued (dev-1: 0a0b, dev-2), made once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZTPKI_CA_PASSPHRASE", CA_PASSPHRASE)
        plant = tmp_path_factory.mktemp("template") / "plant"
        assert main(["ca", "init", "--dir", str(plant), "--name", "customer"]) == 0
        directory = CASystemDirectory(plant)
        authority = directory.load_authority("customer", passphrase=CA_PASSPHRASE.encode())
        now = datetime.now(UTC)
        with open_store(directory) as store:
            for device in ("dev-1", "dev-2"):
                grant = directory.policy("customer").grant(
                    device, SubjectFields(), validity_days=None, now=now
                )
                key = generate_private_key(KeySpec.EC_P256)
                cert = authority.issue(key.public_key(), grant)
                store.record_issuance(_record(cert, device, now), supersede=False)
    return plant


def _record(cert: x509.Certificate, device: str, now: datetime) -> IssuedCertificate:
    from ztpki.pki.pem import certificate_der, fingerprint_sha256, serial_hex

    return IssuedCertificate(
        serial=serial_hex(cert),
        ca_name="customer",
        device_id=device,
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        status=CertificateStatus.ACTIVE,
        request_id=f"r-{device}",
        fingerprint=fingerprint_sha256(cert),
        issued_at=now,
        certificate_der=certificate_der(cert),
    )


@pytest.fixture
def plant(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "plant"))


def serial_of(plant: Path, device: str) -> str:
    with open_store(CASystemDirectory(plant)) as store:
        live = store.active_certificate("customer", device)
    assert live is not None
    return live.serial


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    capsys.readouterr()
    status = main(["ca", *args])
    captured = capsys.readouterr()
    try:
        data = json.loads(captured.out)
    except ValueError:
        data = captured.out
    return status, data, captured.err


def crl_of(plant: Path) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl((plant / "cas" / "customer" / "crl.der").read_bytes())


def test_ok_revoke_hold_release_and_status(plant: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--dir", str(plant), "--name", "customer"]
    serial = serial_of(plant, "dev-1")
    status, shown, _ = run(capsys, "status", *d, "--serial", serial, "--json")
    assert status == 0 and shown["status"] == "good" and shown["device_id"] == "dev-1"
    status, held, _ = run(capsys, "revoke", *d, "--device-id", "dev-1", "--reason",
                          "certificateHold", "--json")  # fmt: skip
    assert status == 0 and held["reason"] == "certificateHold" and held["crl_number"] == 1
    assert crl_of(plant).get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    status, released, _ = run(capsys, "release-hold", *d, "--serial", serial, "--json")
    assert status == 0 and released["status"] == "good" and released["crl_number"] == 2
    assert len(crl_of(plant)) == 0
    # For good, copied as openssl prints serials (upper case, colons).
    pretty = ":".join(serial.upper().zfill(len(serial) + len(serial) % 2)[i : i + 2]
                      for i in range(0, len(serial) + len(serial) % 2, 2))  # fmt: skip
    status, final, _ = run(capsys, "revoke", *d, "--serial", pretty, "--reason",
                           "keyCompromise", "--invalidity-date", "2026-01-02T03:04:05+01:00",
                           "--json")  # fmt: skip
    assert status == 0 and final["serial"] == serial
    assert final["invalidity_date"] == "2026-01-02T02:04:05+00:00"
    status, shown, _ = run(capsys, "status", *d, "--serial", serial, "--json")
    assert shown["status"] == "revoked" and shown["reason"] == "keyCompromise"
    # The table form prints every field, as plain text.
    status, table, _ = run(capsys, "status", *d, "--serial", serial)
    assert status == 0 and "keyCompromise" in table and "revoked" in table


def test_ok_crl_export_reuses_the_current_crl(
    plant: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = ["--dir", str(plant), "--name", "customer"]
    out = plant.parent / "first.crl"
    assert main(["ca", "crl", *d, "--out", str(out)]) == 0  # none yet: signed now
    first = x509.load_der_x509_crl(out.read_bytes())
    # Current, so no key is needed to export it again (no passphrase available now).
    monkeypatch.delenv("ZTPKI_CA_PASSPHRASE")
    again = plant.parent / "again.pem"
    assert main(["ca", "crl", *d, "--out", str(again), "--pem"]) == 0
    assert x509.load_pem_x509_crl(again.read_bytes()) == first
    assert main(["ca", "crl", *d, "--out", str(again)]) != 0  # exists: --force needed


def test_ok_revoke_again_and_crl_after_release_sign_nothing(
    plant: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = ["--dir", str(plant), "--name", "customer"]
    serial = serial_of(plant, "dev-1")
    revoke = ["revoke", *d, "--serial", serial, "--reason", "keyCompromise"]
    status, first, _ = run(capsys, *revoke, "--json")
    assert status == 0 and first["already_revoked"] is False
    published = (plant / "cas" / "customer" / "crl.der").read_bytes()
    status, again, _ = run(capsys, *revoke)
    assert status == 0
    assert f"already revoked at {first['revoked_at']} (keyCompromise)" in again, again
    assert "published" not in again
    status, shown, _ = run(capsys, *revoke, "--json")
    assert shown["already_revoked"] is True and shown["crl_number"] == first["crl_number"]
    assert (plant / "cas" / "customer" / "crl.der").read_bytes() == published
    # release-hold publishes the CRL without the entry; the next `ca crl` exports that one
    # and needs no CA key (so signs nothing).
    held = serial_of(plant, "dev-2")
    assert run(capsys, "revoke", *d, "--serial", held, "--reason", "certificateHold")[0] == 0
    status, released, _ = run(capsys, "release-hold", *d, "--serial", held, "--json")
    assert status == 0
    monkeypatch.delenv("ZTPKI_CA_PASSPHRASE")
    out = plant.parent / "after-release.crl"
    assert main(["ca", "crl", *d, "--out", str(out)]) == 0
    crl = x509.load_der_x509_crl(out.read_bytes())
    assert (
        crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        == (released["crl_number"])
    )


def test_ok_crl_due_is_signed_again(plant: Path) -> None:
    d = ["--dir", str(plant), "--name", "customer"]
    assert main(["ca", "crl", *d, "--out", str(plant.parent / "a.crl")]) == 0
    policy = plant / "cas" / "customer" / "policy.toml"
    policy.write_text(
        policy.read_text(encoding="utf-8").replace(
            "crl_next_update_hours = 24", "crl_next_update_hours = 1"
        ),
        encoding="utf-8",
    )
    # A change recorded behind the published CRL (as by a service that died before its
    # CRL): `ca crl` signs a new one, with the policy's current period.
    with open_store(CASystemDirectory(plant)) as store:
        store.revoke(
            "customer",
            serial_of(plant, "dev-2"),
            reason="superseded",  # type: ignore[arg-type]
            at=datetime.now(UTC) + timedelta(seconds=1),
        )
    assert main(["ca", "crl", *d, "--out", str(plant.parent / "b.crl")]) == 0
    crl = x509.load_der_x509_crl((plant.parent / "b.crl").read_bytes())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert crl.next_update_utc - crl.last_update_utc == timedelta(hours=1)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--serial", "0a", "--device-id", "dev-1"], "exactly one of --serial and --device-id"),
        ([], "exactly one of --serial and --device-id"),
        (["--serial", "zz"], "is not a hexadecimal serial"),
        (["--serial", "abcdef"], "issued no certificate with serial abcdef"),
        (["--device-id", "dev-9"], "holds no live certificate"),
        (["--device-id", "dev-1", "--invalidity-date", "yesterday"], "ISO 8601"),
        (["--device-id", "dev-1", "--invalidity-date", "2026-01-02T03:04:05"], "time zone"),
        (["--device-id", "dev-1", "--passphrase-file", "WRONG"], "wrong or missing passphrase"),
    ],
    ids=[
        "fail-both",
        "fail-neither",
        "fail-not-hex",
        "fail-unknown-serial",
        "fail-no-live",
        "fail-date",
        "fail-naive-date",
        "fail-wrong-passphrase",
    ],
)
def test_fail_revoke_changes_nothing(
    plant: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    if "WRONG" in args:
        wrong = plant.parent / "wrong-passphrase"
        wrong.write_text("not the passphrase\n", encoding="utf-8")
        args = [str(wrong) if a == "WRONG" else a for a in args]
    status, _, err = run(capsys, "revoke", "--dir", str(plant), "--name", "customer",
                         "--reason", "keyCompromise", *args)  # fmt: skip
    assert status != 0
    assert says in " ".join(err.split()), err
    with open_store(CASystemDirectory(plant)) as store:
        assert store.revocations("customer") == []
        assert store.revocation_version("customer") == 0
    assert not (plant / "cas" / "customer" / "crl.der").exists()


def test_fail_unknown_ca_and_release_of_nothing(
    plant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "status", "--dir", str(plant), "--name", "nope", "--serial", "0a")
    assert status != 0 and "no CA named 'nope'" in err
    serial = serial_of(plant, "dev-1")
    status, _, err = run(capsys, "release-hold", "--dir", str(plant), "--name", "customer",
                         "--serial", serial)  # fmt: skip
    assert status != 0 and "not on hold: it is not revoked" in " ".join(err.split())
    assert not (plant / "cas" / "customer" / "crl.der").exists()
