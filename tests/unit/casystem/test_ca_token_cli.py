"""`ztpki ca init --pkcs11` in-process: the options that need each other, where the key is
recorded (key.toml, no key file, no PIN), a token-backed parent signing a subordinate, and
refusals that leave the CA-system directory as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm  # noqa: F401

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.token_keys import TokenOptions
from ztpki.cli import main


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, softhsm: SoftHSM) -> None:  # noqa: F811
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", "token-cli-test-passphrase")
    for name, value in softhsm.env.items():
        monkeypatch.setenv(name, value)


def init(directory: Path, name: str, *args: str) -> int:
    return main(["ca", "init", "--dir", str(directory), "--name", name, *args])


def test_ok_root_and_subordinate_in_a_token(softhsm: SoftHSM, tmp_path: Path) -> None:  # noqa: F811
    label = softhsm.new_token()
    plant = tmp_path / "plant"
    assert init(plant, "root", "--pkcs11", f"pkcs11:token={label};object=root") == 0
    assert init(plant, "sub", "--parent", "root", "--key", "ec-p384",
                "--pkcs11", f"pkcs11:token={label};object=sub") == 0  # fmt: skip
    system = CASystemDirectory(plant)
    for name in ("root", "sub"):
        assert not (plant / "cas" / name / "ca.key.pem").exists()
        recorded = (plant / "cas" / name / "key.toml").read_text()
        assert f"token={label};object={name};id=" in recorded and USER_PIN not in recorded
        assert system.info(name).key_location.startswith(f"pkcs11:token={label};object={name}")
    sub = system.load_authority("sub", passphrase=None, tokens=TokenOptions())
    sub.certificate.verify_directly_issued_by(system.certificate("root"))
    assert sub.certificate.signature_hash_algorithm is not None
    assert isinstance(sub.certificate.extensions.get_extension_for_class(
        x509.BasicConstraints).value.path_length, int)  # fmt: skip


def test_ok_existing_key_object(softhsm: SoftHSM, tmp_path: Path) -> None:  # noqa: F811
    label = softhsm.new_token()
    softhsm.keypair(label, "EC:prime256v1", "made-elsewhere", "42")
    plant = tmp_path / "plant"
    uri = f"pkcs11:token={label};object=made-elsewhere;id=%42"
    assert init(plant, "root", "--pkcs11", uri, "--pkcs11-existing") == 0
    root = CASystemDirectory(plant).certificate("root")
    root.verify_directly_issued_by(root)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rsa-pss"], "need --pkcs11 URI"),
        (["--pkcs11-existing"], "need --pkcs11 URI"),
        (["--pkcs11", "pkcs11:token=T;object=x", "--rsa-pss"], "--rsa-pss needs an RSA key"),
        (["--pkcs11", "pkcs11:object=x"], "names no token"),
        (["--pkcs11", "pkcs11:token=T;object=x?pin-value=1"], "carries a PIN"),
        (
            ["--pkcs11", "pkcs11:token=T;object=nothing-here", "--pkcs11-existing"],
            "no usable key at",
        ),
    ],
    ids=[
        "fail-pss-alone",
        "fail-existing-alone",
        "fail-pss-ec",
        "fail-no-token",
        "fail-pin-value",
        "fail-existing-missing",
    ],
)
def test_fail_refused_and_nothing_written(
    softhsm: SoftHSM,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    says: str,
) -> None:
    label = softhsm.new_token()
    plant = tmp_path / "plant"
    args = [a.replace("token=T", f"token={label}") for a in args]
    assert init(plant, "root", *args) != 0
    assert says in capsys.readouterr().err
    assert not (plant / "cas" / "root").exists()
