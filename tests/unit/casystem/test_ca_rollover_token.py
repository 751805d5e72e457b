"""`ztpki ca rollover --pkcs11` in-process: a root whose key is in a token moves to a new key
object in the token (key.toml rewritten, no key file, no PIN), and the links verify; a root
with a key file may move into a token the same way."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm  # noqa: F401

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.rollover_ocsp import previous_responders
from ztpki.casystem.token_keys import TokenOptions
from ztpki.cli import main
from ztpki.pki.keys import keys_match


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, softhsm: SoftHSM) -> None:  # noqa: F811
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", "token-rollover-test-passphrase")
    for name, value in softhsm.env.items():
        monkeypatch.setenv(name, value)


def test_ok_token_root_rolls_to_a_new_token_key(softhsm: SoftHSM, tmp_path: Path) -> None:  # noqa: F811
    label = softhsm.new_token()
    plant = tmp_path / "plant"
    assert main(["ca", "init", "--dir", str(plant), "--name", "root",
                 "--pkcs11", f"pkcs11:token={label};object=root-1"]) == 0  # fmt: skip
    system = CASystemDirectory(plant)
    old = system.certificate("root")
    assert main(["ca", "rollover", "--dir", str(plant), "--name", "root", "--validity-days",
                 "3651", "--pkcs11", f"pkcs11:token={label};object=root-2"]) == 0  # fmt: skip
    recorded = (plant / "cas" / "root" / "key.toml").read_text()
    assert "object=root-2" in recorded and USER_PIN not in recorded
    assert not (plant / "cas" / "root" / "ca.key.pem").exists()
    authority = system.load_authority("root", passphrase=None, tokens=TokenOptions())
    assert keys_match(authority.key, system.certificate("root").public_key())
    _, new_with_old, old_with_new = system.links("root")
    new_with_old.verify_directly_issued_by(old)  # signed in the token with the old key
    old_with_new.verify_directly_issued_by(authority.certificate)
    assert system.info("root").key_location.startswith(f"pkcs11:token={label};object=root-2")
    # The old token key issued the OCSP responder of what it signed before it was left.
    (responder,) = previous_responders(
        system, "root", passphrase=b"token-rollover-test-passphrase", now=datetime.now(UTC)
    )
    responder.certificate.verify_directly_issued_by(old)


def test_ok_file_root_rolls_into_a_token(softhsm: SoftHSM, tmp_path: Path) -> None:  # noqa: F811
    label = softhsm.new_token()
    plant = tmp_path / "plant"
    assert main(["ca", "init", "--dir", str(plant), "--name", "root"]) == 0
    assert main(["ca", "rollover", "--dir", str(plant), "--name", "root", "--validity-days",
                 "3651", "--pkcs11", f"pkcs11:token={label};object=root"]) == 0  # fmt: skip
    # The old key file is gone: RFC 4210 4.4 needs the old private key no longer.
    assert not (plant / "cas" / "root" / "ca.key.pem").exists()
    system = CASystemDirectory(plant)
    authority = system.load_authority("root", passphrase=None, tokens=TokenOptions())
    assert keys_match(authority.key, system.certificate("root").public_key())
