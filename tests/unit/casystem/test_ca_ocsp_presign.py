"""Pre-signed OCSP files: how a request's GET path becomes a file name, when a file is
signed again, and a sweep over a real SQLite store with the clock passed in."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path, PurePosixPath

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp
from tests.support.ocsp import request_der
from tests.unit.casystem.test_ca_ocsp_responder import (  # the same store fixture
    CA,
    NOW,
    issue,
    store,  # noqa: F401
)

from ztpki.casystem.ocsp_presign import (
    Presigned,
    PresignedResponses,
    file_name,
    resign_due,
    sha1_request,
)
from ztpki.casystem.ocsp_responder import OCSPResponder
from ztpki.cli import main
from ztpki.pki.ocsp import CertID, CertStatus, StatusAnswer, parse_request
from ztpki.pki.pem import serial_hex
from ztpki.store.records import RevocationReason
from ztpki.store.sqlite_ca import SQLiteIssuanceStore

GOOD = StatusAnswer(CertStatus.GOOD)
REVOKED = StatusAnswer(CertStatus.REVOKED, revoked_at=NOW)


def cert_id(serial: int) -> CertID:
    return CertID("sha1", b"\x01" * 20, b"\x02" * 20, serial)


def test_ok_request_is_what_openssl_and_cryptography_send(store: SQLiteIssuanceStore) -> None:  # noqa: F811
    """The DER is a function of the CertID: the same bytes as a client's no-nonce request
    (cryptography's, which the e2e test matches against `openssl ocsp -reqout`)."""
    leaf = issue(store, record=False)
    client = request_der(leaf, CA.certificate)
    parsed = parse_request(client).cert_id
    assert sha1_request(parsed) == client
    # Negative control: a request with a nonce is another byte string (it has no file).
    assert request_der(leaf, CA.certificate, nonce=b"n" * 16) != client


def shapes() -> dict[str, CertID]:
    """CertIDs whose base64 has a '//', ends in '/', or has no '/' at all."""
    found: dict[str, CertID] = {}
    for serial in range(1, 200_000):
        text = base64.b64encode(sha1_request(cert_id(serial))).decode()
        shape = "trailing" if text.endswith("/") else "double" if "//" in text else None
        if shape is None and "/" not in text:
            shape = "plain"
        if shape is not None and shape not in found:
            found[shape] = cert_id(serial)
        if len(found) == 3:
            return found
    raise AssertionError(f"only {sorted(found)} found")


def test_ok_file_name_is_nginx_decoded_merged_uri() -> None:
    forms = shapes()
    for shape, cid in forms.items():
        der = sha1_request(cid)
        text = base64.b64encode(der).decode()
        name = file_name(der)
        assert name is not None
        # What nginx makes of /ocsp/<text>: runs of "/" merged.
        merged = "/".join(part for part in text.split("/") if part)
        assert str(name) == merged + ("/_" if text.endswith("/") else ""), shape
        assert ".." not in name.parts and not name.is_absolute()


def test_ok_file_names_of_different_serials_differ() -> None:
    names = {file_name(sha1_request(cert_id(s))) for s in range(1, 2000)}
    assert len(names) == 1999 and None not in names


def test_fail_a_name_part_over_255_octets_has_no_file() -> None:
    assert file_name(b"\x30" + b"\x00" * 300) is None
    assert isinstance(file_name(b"\x30" + b"\x00" * 150), PurePosixPath)


@pytest.mark.parametrize(
    ("held", "status", "hours", "due"),
    [
        (None, GOOD, 0, True),  # never written
        (Presigned(GOOD, NOW + timedelta(hours=12)), GOOD, 1, False),  # fresh, same status
        (Presigned(GOOD, NOW + timedelta(hours=12)), REVOKED, 1, True),  # status changed
        (Presigned(REVOKED, NOW + timedelta(hours=12)), GOOD, 1, True),  # hold released
        (Presigned(GOOD, NOW + timedelta(hours=12)), GOOD, 12, True),  # half life gone
    ],
)
def test_ok_resign_decision(
    held: Presigned | None, status: StatusAnswer, hours: int, due: bool
) -> None:
    assert resign_due(held, status, NOW + timedelta(hours=hours)) is due


def presigner(store: SQLiteIssuanceStore, tmp_path: Path) -> PresignedResponses:  # noqa: F811
    responder = OCSPResponder({"factory": CA}, store, now=NOW)
    return PresignedResponses(
        responder, store, {"factory": CA.certificate}, {"factory": tmp_path / "ocsp" / "factory"}
    )


def file_status(path: Path) -> ocsp.OCSPCertStatus:
    return ocsp.load_der_ocsp_response(path.read_bytes()).certificate_status


def test_ok_sweep_writes_resigns_on_revocation_and_half_life(
    store: SQLiteIssuanceStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    files = presigner(store, tmp_path)
    leaf, other = issue(store), issue(store)
    assert files.sweep(NOW) == 2
    path = tmp_path / "ocsp" / "factory" / str(file_name(request_der(leaf, CA.certificate)))
    assert file_status(path) is ocsp.OCSPCertStatus.GOOD
    assert path.stat().st_mtime == NOW.timestamp()  # thisUpdate: nginx's Expires base
    assert files.sweep(NOW + timedelta(hours=1)) == 0  # nothing changed: nothing signed
    # Revoked by another process: the store's version moves, one file is signed again.
    store.revoke("factory", serial_hex(leaf), reason=RevocationReason.KEY_COMPROMISE, at=NOW)
    assert files.sweep(NOW + timedelta(hours=1)) == 1
    assert file_status(path) is ocsp.OCSPCertStatus.REVOKED
    # A new certificate gets its file at the next sweep, the others stay as they are.
    issue(store)
    assert files.sweep(NOW + timedelta(hours=2)) == 1
    # Half of a file's 24 h validity: that file is signed again (the others were at 1 h, 2 h).
    assert files.sweep(NOW + timedelta(hours=12, seconds=1)) == 1
    held = files.held("factory", serial_hex(other))
    assert held is not None and held.refresh_at == NOW + timedelta(hours=24, seconds=1)
    assert files.sweep(NOW + timedelta(hours=14, seconds=1)) == 2


def test_ok_expired_certificate_file_removed(store: SQLiteIssuanceStore, tmp_path: Path) -> None:  # noqa: F811
    files = presigner(store, tmp_path)
    leaf = issue(store)  # valid 30 days
    files.sweep(NOW)
    path = tmp_path / "ocsp" / "factory" / str(file_name(request_der(leaf, CA.certificate)))
    assert path.exists()
    assert files.sweep(NOW + timedelta(days=31)) == 0
    assert not path.exists()  # the responder answers for it now


def test_ok_sha256_cert_id_has_no_file(store: SQLiteIssuanceStore, tmp_path: Path) -> None:  # noqa: F811
    files = presigner(store, tmp_path)
    leaf = issue(store)
    files.sweep(NOW)
    sha256 = file_name(request_der(leaf, CA.certificate, algorithm=hashes.SHA256()))
    assert sha256 is not None
    assert not (tmp_path / "ocsp" / "factory" / str(sha256)).exists()


def test_ok_ocsp_nginx_uses_every_ca_and_the_shortest_validity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", "presign-cli-passphrase")
    system = tmp_path / "system"
    for name in ("alpha", "beta"):
        assert main(["ca", "init", "--dir", str(system), "--name", name]) == 0
    policy = system / "cas" / "beta" / "policy.toml"
    policy.write_text(
        policy.read_text().replace("crl_next_update_hours = 24", "crl_next_update_hours = 6")
    )
    capsys.readouterr()
    argv = ["ca", "ocsp-nginx", "--dir", str(system), "--ocsp-dir", "/srv/answers"]
    assert main([*argv, "--responder", "127.0.0.1:8080"]) == 0
    conf = capsys.readouterr().out
    assert "try_files /alpha/$1 /beta/$1 @ztpki;" in conf
    assert "root /srv/answers;" in conf and "server 127.0.0.1:8080;" in conf
    # beta's answers live 6 h: no max-age may be longer (RFC 5019 6.2).
    assert "expires modified +6h;" in conf and "+24h" not in conf


def test_fail_ocsp_dir_without_http_listen_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = tmp_path / "answers"
    status = main(["ca", "serve", "--dir", str(tmp_path / "none"), "--ocsp-dir", str(answers)])
    assert status == 2 and "--ocsp-dir needs --http-listen" in capsys.readouterr().err
    assert not answers.exists()  # nothing written
