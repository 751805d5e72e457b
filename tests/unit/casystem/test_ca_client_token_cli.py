"""`ztpki ca add-client --pkcs11` in-process: an existing EC key object (a smart card's) is
certified and recorded; options that contradict a token key, an RSA key object and a wrong
PIN are refused, and then no CA-client is registered, no credential written and no key
object left in the token."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm  # noqa: F401

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.operations import open_store
from ztpki.cli import main
from ztpki.credentials import Credential
from ztpki.tokens import TokenKey

PASSPHRASE = "client-token-cli-passphrase"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, softhsm: SoftHSM) -> None:  # noqa: F811
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", PASSPHRASE)
    for name, value in softhsm.env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def plant(tmp_path: Path) -> Path:
    directory = tmp_path / "plant"
    assert main(["ca", "init", "--dir", str(directory), "--name", "devices"]) == 0
    return directory


def add_client(plant: Path, out: Path, *args: str) -> int:
    return main(["ca", "add-client", "--dir", str(plant), "--name", out.name,
                 "--ca", "devices", "--out", str(out), *args])  # fmt: skip


def clients(plant: Path) -> list[str]:
    with open_store(CASystemDirectory(plant)) as store:
        return [c.name for c in store.clients()]


def test_ok_existing_ec_key_object_is_certified(
    softhsm: SoftHSM,  # noqa: F811
    plant: Path,
    tmp_path: Path,
) -> None:
    label = softhsm.new_token("card")
    softhsm.keypair(label, "EC:prime256v1", "card-key", "07")
    out = tmp_path / "line-7"
    uri = f"pkcs11:token={label};object=card-key;id=%07"
    assert add_client(plant, out, "--pkcs11", uri, "--pkcs11-existing") == 0
    assert clients(plant) == ["line-7"]
    credential = Credential.load(out, passphrase=None)
    assert isinstance(credential.key, TokenKey)
    assert credential.key.public_key() == credential.certificate.public_key()
    assert USER_PIN not in (out / "key.toml").read_text()
    assert softhsm.private_keys(label).count("Private Key Object") == 1  # nothing generated


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (("--insecure-client-key",), "has no passphrase"),
        (("--pkcs11-existing",), "RSA"),
        (("--pkcs11-module", "/nonexistent/libpkcs11.so"), "does not exist"),
    ],
)
def test_fail_contradictions_leave_nothing(
    softhsm: SoftHSM,  # noqa: F811
    plant: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    said: str,
) -> None:
    label = softhsm.new_token("card")
    softhsm.keypair(label, "rsa:2048", "station", "08")
    before = softhsm.private_keys(label)
    out = tmp_path / "line-8"
    status = add_client(plant, out, "--pkcs11", f"pkcs11:token={label};object=station", *extra)
    assert status != 0
    assert said in " ".join(capsys.readouterr().err.split())
    assert clients(plant) == []
    assert not out.exists() or not any(out.iterdir())
    assert softhsm.private_keys(label) == before


def test_fail_wrong_pin_generates_and_registers_nothing(
    softhsm: SoftHSM,  # noqa: F811
    plant: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    label = softhsm.new_token("card")
    monkeypatch.setenv("ZTPKI_PKCS11_PIN", "not-the-pin-1234")
    out = tmp_path / "line-9"
    assert add_client(plant, out, "--pkcs11", f"pkcs11:token={label};object=station") != 0
    err = capsys.readouterr().err
    assert "the PIN for token" in err and "not-the-pin-1234" not in err
    assert clients(plant) == []
    assert not out.exists() or not any(out.iterdir())
    assert "Private Key Object" not in softhsm.private_keys(label)
