"""The doctor's pure judgements: certificate lifetimes, CRL freshness, file modes, schemas."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ztpki.doctor.certificates import certificate_lifetime, crl_freshness
from ztpki.doctor.files import secret_file
from ztpki.doctor.findings import Severity, worst
from ztpki.doctor.schema import schema_state
from ztpki.store.sqlite import open_node_store
from ztpki.store.sqlite_register_schema import SCHEMA_COMPONENT, SCHEMA_VERSION

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2027, 1, 1, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "doctor test")])


def _cert() -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(START)
        .not_valid_after(END)
        .sign(KEY, hashes.SHA256())
    )


def _crl(next_update: datetime) -> x509.CertificateRevocationList:
    builder = x509.CertificateRevocationListBuilder().issuer_name(NAME).last_update(START)
    return builder.next_update(next_update).sign(KEY, hashes.SHA256())


CERT = _cert()


@pytest.mark.parametrize(
    ("now", "severity", "words"),
    [
        (START + timedelta(days=100), Severity.OK, "valid until 2027-01-01"),
        (END - timedelta(days=10), Severity.WARNING, "expires in 10 days"),
        (END - timedelta(hours=5), Severity.WARNING, "expires in 5 hours"),
        (END, Severity.ERROR, "expired on 2027-01-01"),
        (START - timedelta(seconds=1), Severity.ERROR, "check the clock"),
    ],
)
def test_certificate_lifetime_at_its_boundaries(
    now: datetime, severity: Severity, words: str
) -> None:
    finding = certificate_lifetime(
        CERT, what="server", fix="renew it", now=now, warn_before=timedelta(days=30)
    )
    assert finding.severity is severity
    assert words in finding.message
    assert finding.fix == (None if severity is Severity.OK else "renew it")
    assert "CN=doctor test" in finding.subject


def test_warn_before_zero_only_errors_on_expiry() -> None:
    finding = certificate_lifetime(
        CERT, what="server", fix="x", now=END - timedelta(seconds=1), warn_before=timedelta(0)
    )
    assert finding.severity is Severity.OK


def test_crl_is_stale_from_its_next_update() -> None:
    crl = _crl(datetime(2026, 6, 1, tzinfo=UTC))
    before = crl_freshness(crl, what="CRL", fix="re-sign", now=datetime(2026, 5, 31, tzinfo=UTC))
    after = crl_freshness(crl, what="CRL", fix="re-sign", now=datetime(2026, 6, 1, tzinfo=UTC))
    assert before.severity is Severity.OK and "current until 2026-06-01" in before.message
    assert after.severity is Severity.ERROR and "stale" in after.message
    assert after.fix == "re-sign"


@pytest.mark.parametrize(
    ("mode", "severity"),
    [(0o600, Severity.OK), (0o400, Severity.OK), (0o640, Severity.ERROR), (0o604, Severity.ERROR)],
)
def test_secret_files_must_be_private(tmp_path: Path, mode: int, severity: Severity) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(b"secret")
    key.chmod(mode)
    finding = secret_file(key, what="a key")
    assert finding.severity is severity
    if severity is Severity.ERROR:
        assert finding.fix == f"chmod 600 {key}"


def test_a_missing_secret_file_is_an_error(tmp_path: Path) -> None:
    finding = secret_file(tmp_path / "gone.pem", what="a key")
    assert finding.severity is Severity.ERROR and "cannot be read" in finding.message


def _schema(path: Path) -> Severity:
    return schema_state(
        path, SCHEMA_COMPONENT, SCHEMA_VERSION, migrate="ztpki node migrate", create="init"
    ).severity


def test_schema_current_outdated_too_new_and_absent(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite"
    assert _schema(db) is Severity.WARNING  # nothing there yet
    assert not db.exists(), "the doctor must not create a store"
    open_node_store(db).close()
    assert _schema(db) is Severity.OK
    for version, severity in (
        (SCHEMA_VERSION - 1, Severity.ERROR),
        (SCHEMA_VERSION + 1, Severity.ERROR),
    ):
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE schema_version SET version = ? WHERE component = ?",
                (version, SCHEMA_COMPONENT),
            )
        finding = schema_state(
            db, SCHEMA_COMPONENT, SCHEMA_VERSION, migrate="ztpki node migrate --dir D", create="x"
        )
        assert finding.severity is severity
        if version < SCHEMA_VERSION:
            assert "ztpki node migrate --dir D" in (finding.fix or "")
        else:
            assert "newer ztpki" in finding.message


def test_the_worst_finding_decides() -> None:
    ok = certificate_lifetime(CERT, what="a", fix="x", now=START + timedelta(days=1))
    bad = certificate_lifetime(CERT, what="a", fix="x", now=END)
    assert worst([]) is Severity.OK
    assert worst([ok]) is Severity.OK
    assert worst([ok, bad]) is Severity.ERROR
