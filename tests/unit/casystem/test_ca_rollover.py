"""`ztpki ca rollover` on a CA-system directory (casystem/rollover.py), in-process: the files
it leaves, issuance with the new key, the CRL decision checked with `openssl verify`, a crash
between its steps, and the refusals (nothing written).

The node and a device following the rollover: tests/e2e/test_cmp_rollover.py.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

import ztpki.casystem.rollover as rollover_module
from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.revocation_operations import crl_target
from ztpki.casystem.rollover import PENDING, rollover_ca
from ztpki.casystem.rollover_ocsp import PREVIOUS_KEYS, previous_responders
from ztpki.cli import main
from ztpki.errors import ConfigurationError
from ztpki.pki.crl import build_crl
from ztpki.pki.keys import KeySpec, keys_match
from ztpki.pki.pem import certificates_pem, load_certificates_pem, serial_hex
from ztpki.store.records import Revocation, RevocationReason

PASSPHRASE = "rollover-test-ca-passphrase"
NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", PASSPHRASE)


@pytest.fixture
def system(tmp_path: Path) -> CASystemDirectory:
    directory = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(directory), "--name", "croot"]) == 0
    assert (
        main(["ca", "init", "--dir", str(directory), "--name", "old-sub", "--parent", "croot"]) == 0
    )
    return CASystemDirectory(directory)


def roll(system: CASystemDirectory, *args: str) -> int:
    return main(["ca", "rollover", "--dir", str(system.root), "--name", "croot",
                 "--validity-days", "3651", *args])  # fmt: skip


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def openssl_verify(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def pem(path: Path, *certificates: x509.Certificate) -> str:
    path.write_bytes(certificates_pem(list(certificates)))
    return str(path)


def test_ok_rollover_issues_with_the_new_key_and_lists_both(
    system: CASystemDirectory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = system.certificate("croot")
    assert roll(system) == 0
    new = system.certificate("croot")
    old_with_old, new_with_old, old_with_new = system.links("croot")
    assert old_with_old == old and new != old and new.subject == old.subject
    # The CA loads with the new key, and what it issues now verifies under the new root only.
    authority = system.load_authority("croot", passphrase=PASSPHRASE.encode())
    assert keys_match(authority.key, new.public_key())
    assert (
        main(["ca", "init", "--dir", str(system.root), "--name", "new-sub", "--parent", "croot"])
        == 0
    )
    new_sub = system.certificate("new-sub")
    new_sub.verify_directly_issued_by(new)
    # For a party that still trusts only the old root, through newWithOld.
    old_pem, new_pem = pem(tmp_path / "old.pem", old), pem(tmp_path / "new.pem", new)
    sub_pem = pem(tmp_path / "new-sub.pem", new_sub)
    assert (
        openssl_verify(
            tmp_path,
            "-CAfile",
            old_pem,
            "-untrusted",
            pem(tmp_path / "nwo.pem", new_with_old),
            sub_pem,
        ).returncode
        == 0
    )
    assert openssl_verify(tmp_path, "-CAfile", old_pem, sub_pem).returncode != 0
    # ... and the old key's subordinate for a party that trusts the new root, via oldWithNew.
    old_sub = pem(tmp_path / "old-sub.pem", system.certificate("old-sub"))
    assert (
        openssl_verify(
            tmp_path,
            "-CAfile",
            new_pem,
            "-untrusted",
            pem(tmp_path / "own.pem", old_with_new),
            old_sub,
        ).returncode
        == 0
    )
    # `ca list` shows the current root and the previous key; export carries the links.
    capsys.readouterr()
    assert main(["ca", "list", "--dir", str(system.root), "--json"]) == 0
    (croot,) = [c for c in json.loads(capsys.readouterr().out) if c["name"] == "croot"]
    assert len(croot["previous_keys"]) == 1
    assert system.export_chain("old-sub") == (
        system.certificate("old-sub"),
        old,
        new,
        new_with_old,
        old_with_new,
    )
    assert not (system.ca_dir("croot") / "ca.key.pem.old").exists()


def test_ok_crl_signed_with_the_new_key_covers_the_old_keys_certificates(
    system: CASystemDirectory, tmp_path: Path
) -> None:
    """The decision (casystem/rollover.py): one CRL per CA, signed with its current key."""
    old = system.certificate("croot")
    old_sub = system.certificate("old-sub")
    assert roll(system) == 0
    new = system.certificate("croot")
    _, new_with_old, old_with_new = system.links("croot")
    target = crl_target(system, "croot", passphrase=PASSPHRASE.encode())
    revoked = Revocation("croot", serial_hex(old_sub), NOW, RevocationReason.KEY_COMPROMISE)
    crl = build_crl(target.authority, [revoked], number=1, now=NOW)
    crl_file = tmp_path / "crl.pem"
    from cryptography.hazmat.primitives.serialization import Encoding

    crl_file.write_bytes(crl.public_bytes(Encoding.PEM))
    sub = pem(tmp_path / "sub.pem", old_sub)
    crl_args = ("-crl_check", "-CRLfile", str(crl_file))
    # Trusting the new root: the old key's certificate is found revoked.
    by_new = openssl_verify(
        tmp_path,
        "-CAfile",
        pem(tmp_path / "new.pem", new),
        "-untrusted",
        pem(tmp_path / "own.pem", old_with_new),
        *crl_args,
        sub,
    )
    assert by_new.returncode != 0 and "certificate revoked" in by_new.stdout + by_new.stderr
    # Trusting only the old root: the CRL's signer is validated through newWithOld
    # (RFC 5280 6.3.3 (f); OpenSSL's -extended_crl).
    by_old = openssl_verify(
        tmp_path,
        "-extended_crl",
        "-CAfile",
        pem(tmp_path / "old.pem", old),
        "-untrusted",
        pem(tmp_path / "nwo.pem", new_with_old),
        *crl_args,
        sub,
    )
    assert by_old.returncode != 0 and "certificate revoked" in by_old.stdout + by_old.stderr
    # The negative control: the same CRL without the revocation lets the certificate pass.
    clean = build_crl(target.authority, [], number=2, now=NOW)
    crl_file.write_bytes(clean.public_bytes(Encoding.PEM))
    ok = openssl_verify(
        tmp_path,
        "-CAfile",
        str(tmp_path / "new.pem"),
        "-untrusted",
        str(tmp_path / "own.pem"),
        *crl_args,
        sub,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_ok_a_crash_after_the_point_of_no_return_is_finished_by_running_again(
    system: CASystemDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = system.certificate("croot")

    def crash(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # the process dies right after the pending rename

    monkeypatch.setattr(rollover_module, "_finish", crash)
    with pytest.raises(KeyboardInterrupt):
        rollover_ca(system, "croot", key_spec=KeySpec.EC_P256, validity_days=3651,
                    passphrase=PASSPHRASE.encode(), now=NOW)  # fmt: skip
    monkeypatch.undo()
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", PASSPHRASE)
    pending = system.ca_dir("croot") / PENDING
    staged = load_certificates_pem((pending / "ca.pem").read_bytes())[0]
    assert system.certificate("croot") == old  # nothing of the CA replaced yet
    with pytest.raises(ConfigurationError, match="interrupted"):
        system.load_authority("croot", passphrase=PASSPHRASE.encode())
    # Running again finishes that rollover: the staged key and certificate, no third key.
    done = rollover_ca(system, "croot", key_spec=KeySpec.EC_P256, validity_days=3651,
                       passphrase=PASSPHRASE.encode(), now=NOW)  # fmt: skip
    assert done.resumed and system.certificate("croot") == staged == done.update.new_with_new
    assert not pending.exists()
    authority = system.load_authority("croot", passphrase=PASSPHRASE.encode())
    assert keys_match(authority.key, staged.public_key())
    assert system.links("croot")[0] == old
    # The old key's OCSP responder, issued before the crash, is in place too.
    (responder,) = previous_responders(system, "croot", passphrase=PASSPHRASE.encode(), now=NOW)
    responder.certificate.verify_directly_issued_by(old)
    assert responder.issuer == old
    assert len(list((system.ca_dir("croot") / PREVIOUS_KEYS).iterdir())) == 1


def test_ok_a_crash_before_the_point_of_no_return_leaves_the_ca_as_it_was(
    system: CASystemDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = files(system.ca_dir("croot"))

    def crash(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rollover_module.os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        rollover_ca(system, "croot", key_spec=KeySpec.EC_P256, validity_days=3651,
                    passphrase=PASSPHRASE.encode(), now=NOW)  # fmt: skip
    monkeypatch.undo()
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", PASSPHRASE)
    assert files(system.ca_dir("croot")) == before
    system.load_authority("croot", passphrase=PASSPHRASE.encode())  # loads as before
    assert roll(system) == 0  # and a new run starts over from the staging directory
    assert system.certificate("croot") != load_certificates_pem(before["ca.pem"])[0]


@pytest.mark.parametrize(
    ("args", "secret", "said"),
    [
        pytest.param(["--name", "old-sub"], PASSPHRASE, "subordinate", id="fail-subordinate"),
        pytest.param(["--name", "nope"], PASSPHRASE, "no CA named", id="fail-unknown-ca"),
        pytest.param(
            ["--name", "croot"],
            "another-passphrase-entirely",
            "passphrase",
            id="fail-wrong-passphrase",
        ),
        pytest.param(
            ["--name", "croot", "--validity-days", "30"],
            PASSPHRASE,
            "expire before",
            id="fail-shorter-life",
        ),
    ],
)
def test_fail_rollover_refused_writes_nothing(
    system: CASystemDirectory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    secret: str,
    said: str,
) -> None:
    before = {n: files(system.ca_dir(n)) for n in system.ca_names()}
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", secret)
    assert main(["ca", "rollover", "--dir", str(system.root), *args]) != 0
    assert said in capsys.readouterr().err
    assert {n: files(system.ca_dir(n)) for n in system.ca_names()} == before
    assert not any((system.ca_dir(n) / "rollover.tmp").exists() for n in system.ca_names())
