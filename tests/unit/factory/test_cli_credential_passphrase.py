"""The factory commands' credential errors name where the passphrase comes from, as the CA
system's and the node's do (a new user otherwise does not know which variable to set)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ztpki.cli.factory import client_credential, load_signer
from ztpki.credentials import Credential
from ztpki.errors import ConfigurationError


def saved_credential(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "line-1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    Credential(key, (cert,), (cert,)).save(directory, passphrase=b"right-passphrase")
    return directory


@pytest.mark.parametrize("secret", [None, "wrong-passphrase"])
def test_fail_client_credential_names_its_passphrase_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    cred = saved_credential(tmp_path / "line-1.cred")
    if secret is None:
        monkeypatch.delenv("ZTPKI_CLIENT_PASSPHRASE", raising=False)
    else:
        monkeypatch.setenv("ZTPKI_CLIENT_PASSPHRASE", secret)
    with pytest.raises(ConfigurationError) as refused:
        client_credential(cred, None)
    assert refused.value.message == (
        f"cannot open the key in {cred}: wrong or missing passphrase "
        "(--client-passphrase-file or ZTPKI_CLIENT_PASSPHRASE)"
    )


def test_fail_signer_credential_names_its_passphrase_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cred = saved_credential(tmp_path / "signer.cred")
    monkeypatch.setenv("ZTPKI_SIGNER_PASSPHRASE", "wrong-passphrase")
    with pytest.raises(ConfigurationError, match=r"\(--signer-passphrase-file or ZTPKI_SIGNER_"):
        load_signer(cred, None)
