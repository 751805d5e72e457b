"""Attacks on CA keys kept in a PKCS#11 token (SoftHSM2): reading the key out, guessing the
PIN, slipping a PIN into a URI that lands in files and listings, and shadowing an existing
key with a new one under the same name. After each case: the key is where it was, nothing
was written, and the token still signs.
"""

from __future__ import annotations

from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from tests.attacks.attack_report import AttackReport
from tests.support.services import run_ztpki
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm  # noqa: F401

from ztpki.pki.keys import KeySpec
from ztpki.pki.pkcs11_uri import Pkcs11Uri
from ztpki.tokens import TokenPool, generate_token_key, token_access

CATEGORY = "keys"
PASSPHRASE = {"ZTPKI_CA_PASSPHRASE": "attack-ca-passphrase-1"}


def _init(root: Path, hsm: SoftHSM, uri: str, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_ztpki(
        "ca", "init", "--dir", str(root), "--name", "victim", "--pkcs11", uri, *extra,
        env={**hsm.env, **PASSPHRASE, **(env or {})}, check=False, timeout=120,
    )  # fmt: skip


def test_fail_read_the_ca_key_out_of_the_token(
    softhsm: SoftHSM,  # noqa: F811
    tmp_path: Path,
    attack_report: AttackReport,
) -> None:
    label = softhsm.new_token("atk")
    made = _init(tmp_path / "sys", softhsm, f"pkcs11:token={label};object=ca")
    assert made.returncode == 0, made.stderr
    with softhsm.session(label) as session:
        key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label="ca")
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]
        wrapping = session.generate_key(pkcs11.KeyType.AES, 256, store=False)
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            wrapping.wrap_key(key)
        with pytest.raises(pkcs11.exceptions.PKCS11Error):  # CKA_EXTRACTABLE only goes down
            key[pkcs11.Attribute.EXTRACTABLE] = True
    assert not (tmp_path / "sys" / "cas" / "victim" / "ca.key.pem").exists()
    attack_report.record(
        case="keys/token-key-read-or-wrap",
        category=CATEGORY,
        attack="a holder of the user PIN reads the CA key's value, wraps it under an AES key "
        "of their own, or sets it extractable",
        observed="CKR_ATTRIBUTE_SENSITIVE for the value; wrapping and CKA_EXTRACTABLE=true "
        "refused by the token; no key file for the CA exists",
        verdict="refused",
    )


def test_fail_wrong_pin_changes_nothing(
    softhsm: SoftHSM,  # noqa: F811
    tmp_path: Path,
    attack_report: AttackReport,
) -> None:
    label = softhsm.new_token("atk")
    root = tmp_path / "sys"
    guessed = _init(
        root, softhsm, f"pkcs11:token={label};object=ca",
        env={"ZTPKI_PKCS11_PIN": "guess-0000"},
    )  # fmt: skip
    assert guessed.returncode != 0
    assert "the PIN for token" in guessed.stderr and "guess-0000" not in guessed.stderr
    assert not (root / "cas" / "victim").exists()
    listing = softhsm.private_keys(label)
    assert "Private Key Object" not in listing  # nothing was generated
    attack_report.record(
        case="keys/token-wrong-pin",
        category=CATEGORY,
        attack="`ca init --pkcs11` with a guessed PIN",
        observed="refused with 'the PIN for token ... is wrong', the PIN not echoed; no CA "
        "directory and no object in the token",
        verdict="refused",
    )


def test_fail_pin_in_uri_never_lands_in_files(
    softhsm: SoftHSM,  # noqa: F811
    tmp_path: Path,
    attack_report: AttackReport,
) -> None:
    label = softhsm.new_token("atk")
    root = tmp_path / "sys"
    result = _init(root, softhsm, f"pkcs11:token={label};object=ca?pin-value={USER_PIN}")
    assert result.returncode != 0
    assert "carries a PIN" in result.stderr and USER_PIN not in result.stderr
    assert not root.exists() or not any(
        USER_PIN.encode() in p.read_bytes() for p in root.rglob("*") if p.is_file()
    )
    attack_report.record(
        case="keys/pin-in-uri",
        category=CATEGORY,
        attack="a PKCS#11 URI with pin-value, which would be recorded in key.toml and shown "
        "by `ca list`",
        observed="refused before the token is touched ('carries a PIN'), the PIN not echoed "
        "and written nowhere",
        verdict="refused",
    )


def test_fail_shadow_an_existing_key(
    softhsm: SoftHSM,  # noqa: F811
    attack_report: AttackReport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ZTPKI_PKCS11_PIN", USER_PIN)
    label = softhsm.new_token("atk")
    uri = Pkcs11Uri.parse(f"pkcs11:token={label};object=ca")
    pool = TokenPool(token_access(uri, module=softhsm.module), uri)
    original = generate_token_key(pool, uri, KeySpec.EC_P256)
    before = original.public_key()
    with pytest.raises(Exception, match="already holds a key"):
        generate_token_key(pool, uri, KeySpec.EC_P256)
    listing = softhsm.private_keys(label)
    assert listing.count("Private Key Object") == 1
    original.sign(b"still signs", hashes.SHA256())
    assert original.public_key() == before
    attack_report.record(
        case="keys/token-key-shadowing",
        category=CATEGORY,
        attack="generate a second key under an existing CA key's label, so that a later "
        "lookup by label finds the attacker's",
        observed="refused ('the token already holds a key at ...'); one private key object "
        "with that label; the CA key still signs",
        verdict="refused",
    )


def test_fail_key_toml_pointed_at_another_key(
    softhsm: SoftHSM,  # noqa: F811
    tmp_path: Path,
    attack_report: AttackReport,
) -> None:
    label = softhsm.new_token("atk")
    root = tmp_path / "sys"
    for name in ("victim", "other"):
        made = run_ztpki(
            "ca", "init", "--dir", str(root), "--name", name,
            "--pkcs11", f"pkcs11:token={label};object={name}",
            env={**softhsm.env, **PASSPHRASE}, check=False, timeout=120,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    key_toml = root / "cas" / "victim" / "key.toml"
    other = (root / "cas" / "other" / "key.toml").read_text()
    key_toml.write_text(other)  # the victim CA now names the other CA's key object
    served = run_ztpki(
        "ca", "serve", "--dir", str(root), "--listen", "127.0.0.1:0",
        env={**softhsm.env, **PASSPHRASE}, check=False, timeout=120,
    )  # fmt: skip
    assert served.returncode != 0
    assert "is not the key of its certificate" in served.stderr
    assert "listening on" not in served.stdout  # it never served a request
    attack_report.record(
        case="keys/key-toml-redirected",
        category=CATEGORY,
        attack="key.toml of a token-backed CA edited to name another key object in the "
        "token, so the CA would sign with a key its certificate does not certify",
        observed="`ca serve` refuses to start: 'the token key of CA victim (...) is not the "
        "key of its certificate'; nothing served or issued",
        verdict="refused",
    )
