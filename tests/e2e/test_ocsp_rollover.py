"""OCSP after `ztpki ca rollover`: what the old key issued is still answered for, signed by the
responder certificate the old key issued before it was deleted (casystem/rollover_ocsp.py),
asked by `openssl ocsp` with the old root as issuer, and verified against the old root.

Negative controls: a revoked certificate is not good, a serial the CA never issued is
unknown, and a CertID of a key the CA never had (the root's name, another key) is
unauthorized.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from tests.e2e.casystem_fixtures import CASystemUnderTest, enroll_all, leaf_of, ztpki
from tests.support.ocsp import (
    http_address,
    openssl_ocsp,
    post_ocsp,
    request_der,
    verify_signed_by,
    write_pem,
)

from ztpki.casystem.rollover_ocsp import CERT_FILE, PREVIOUS_KEYS
from ztpki.pki.authority import create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import load_certificates_pem, serial_hex
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest

pytestmark = pytest.mark.timeout(300)

_ids = itertools.count(1)


@dataclass
class Rolled:
    system: CASystemUnderTest
    http: tuple[str, int]
    work: Path
    old_root: x509.Certificate
    old_leaves: list[x509.Certificate]

    @property
    def url(self) -> str:
        return f"http://{self.http[0]}:{self.http[1]}/ocsp"

    def issue(self, count: int) -> list[x509.Certificate]:
        requests = [
            EnrollmentRequest(f"req-{os.getpid()}-{next(_ids)}", f"dev-{os.getpid()}-{next(_ids)}")
            for _ in range(count)
        ]
        answers = asyncio.run(enroll_all(self.system, requests))
        assert all(isinstance(a, EnrollmentAnswer) for a in answers), answers
        return [leaf_of(a) for a in answers]  # type: ignore[arg-type]

    def ask(self, issuer: Path, target: str | Path, *extra: str | Path) -> str:
        """`openssl ocsp` naming ``issuer``; ``target`` a certificate file or a serial."""
        which = ("-serial", target) if isinstance(target, str) else ("-cert", target)
        done = openssl_ocsp("-issuer", issuer, *which, "-url", self.url, *extra)
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rolled]:
    base = tmp_path_factory.mktemp("ocsp-rollover")
    logs = base / "logs"
    logs.mkdir()
    system = CASystemUnderTest(base / "system", logs)
    system.init_ca("croot", "--default")
    system.add_client("line1")
    system.start("--key-workers", "1")
    try:
        state = Rolled(system, ("", 0), base, system.ca_certificate("croot"), [])
        state.old_leaves = state.issue(2)
        system.stop()
        ztpki("ca", "rollover", "--dir", str(system.root), "--name", "croot",
              "--validity-days", "3651")  # fmt: skip
        service = system.start("--http-listen", "127.0.0.1:0", "--key-workers", "1")
        state.http = http_address(service)
        yield state
    finally:
        system.stop()


def test_ok_old_keys_certificates_good_then_revoked_under_the_old_root(rolled: Rolled) -> None:
    old_root = write_pem(rolled.work / "old-root.pem", rolled.old_root)
    new_root = rolled.system.ca_certificate("croot")
    assert new_root.public_key() != rolled.old_root.public_key()  # the rollover happened
    leaf, other = rolled.old_leaves
    leaf_pem = write_pem(rolled.work / "leaf.pem", leaf)
    other_pem = write_pem(rolled.work / "other.pem", other)
    good = rolled.ask(old_root, leaf_pem, "-CAfile", old_root)
    assert "Response verify OK" in good and f"{leaf_pem}: good" in good, good

    # The answer's signer: a responder certificate the old key issued, kept on disk, valid
    # until the last certificate of the old key expires, never longer.
    answer = post_ocsp(rolled.http, request_der(leaf, rolled.old_root)).ocsp()
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    (responder,) = answer.certificates
    responder.verify_directly_issued_by(rolled.old_root)
    verify_signed_by(answer, responder)
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert responder.not_valid_after_utc == max(c.not_valid_after_utc for c in rolled.old_leaves)
    kept = rolled.system.root / "cas" / "croot" / PREVIOUS_KEYS
    (folder,) = kept.iterdir()
    assert load_certificates_pem((folder / CERT_FILE).read_bytes()) == [responder]
    assert (folder / "ocsp.key.pem").stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (folder / "ocsp.key.pem").read_bytes()
    # ... which -VAfile trusts directly.
    va = write_pem(rolled.work / "responder.pem", responder)
    assert "Response verify OK" in rolled.ask(old_root, leaf_pem, "-VAfile", va)

    # `ca revoke` (its own process): the running responder says revoked at once.
    ztpki("ca", "revoke", "--dir", str(rolled.system.root), "--name", "croot",
          "--serial", serial_hex(leaf), "--reason", "keyCompromise")  # fmt: skip
    revoked = rolled.ask(old_root, leaf_pem, "-CAfile", old_root)
    assert "Response verify OK" in revoked and f"{leaf_pem}: revoked" in revoked, revoked
    assert "Reason: keyCompromise" in revoked
    # Negative controls: the other certificate is still good; a serial never issued, unknown.
    assert f"{other_pem}: good" in rolled.ask(old_root, other_pem, "-CAfile", old_root)
    never = rolled.ask(old_root, "0x7a7a7a7a7a7a", "-CAfile", old_root)
    assert "Response verify OK" in never and ": unknown" in never, never

    # The current key answers as before: a certificate it issued is good under the new root.
    (fresh,) = rolled.issue(1)
    new_pem = write_pem(rolled.work / "new-root.pem", new_root)
    fresh_pem = write_pem(rolled.work / "fresh.pem", fresh)
    now_good = rolled.ask(new_pem, fresh_pem, "-CAfile", new_pem)
    assert "Response verify OK" in now_good and f"{fresh_pem}: good" in now_good, now_good
    # ... and the old key's responder does not vouch for it: the old key never signed it.
    not_old = rolled.ask(old_root, fresh_pem, "-CAfile", old_root)
    assert "Response verify OK" in not_old and f"{fresh_pem}: unknown" in not_old, not_old


def test_fail_cert_id_of_a_key_the_ca_never_had_is_unauthorized(rolled: Rolled) -> None:
    # The root's very name with another key: neither the current key nor the earlier one.
    key = generate_private_key(KeySpec.EC_P256)
    stranger = create_self_signed_ca(
        key, rolled.old_root.subject, now=datetime.now(UTC), validity=timedelta(days=30)
    )
    answer = post_ocsp(rolled.http, request_der(rolled.old_leaves[1], stranger))
    assert answer.ocsp().response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
