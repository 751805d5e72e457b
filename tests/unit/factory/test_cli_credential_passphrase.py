"""The factory commands' credential errors name where the passphrase comes from, as the CA
system's and the node's do (a new user otherwise does not know which variable to set)."""

from __future__ import annotations

from pathlib import Path

import pytest
from factory_pki import leaf, root_ca

from ztpki.cli.factory import client_credential, load_signer
from ztpki.credentials import Credential
from ztpki.errors import ConfigurationError
from ztpki.pki.profiles import CertificateProfile


def saved_credential(directory: Path) -> Path:
    root = root_ca("factory-root")
    key, chain = leaf(root, "line-1", CertificateProfile.CLIENT)
    Credential(key, chain[:1], (root.certificate,)).save(directory, passphrase=b"right-passphrase")
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
