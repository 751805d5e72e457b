"""SoftHSM2 tokens for the tests: a fresh token directory per test session, real
`softhsm2-util` to make tokens and real `pkcs11-tool` (OpenSC) to look inside them.

SoftHSM reads SOFTHSM2_CONF when the module is initialized, so the session fixture sets it
in this process's environment (in-process tests) and hands it to the services it starts
(``SoftHSM.env``). Each xdist worker is its own session, so workers never share a token.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest

from ztpki.demo.softhsm import init_token, softhsm_config, softhsm_module
from ztpki.pki.pkcs11_uri import Pkcs11Uri
from ztpki.tokens import TokenAccess, TokenPool

USER_PIN = "1234-test-pin"
SO_PIN = "5678-test-so-pin"


@dataclass(frozen=True)
class SoftHSM:
    """One SoftHSM2 installation: its configuration, its token directory, its module."""

    root: Path
    module: str

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def env(self) -> dict[str, str]:
        """What a `ztpki` process needs to reach these tokens."""
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "ZTPKI_PKCS11_MODULE": self.module,
            "ZTPKI_PKCS11_PIN": USER_PIN,
        }

    def new_token(self, prefix: str = "t") -> str:
        """A freshly initialized token; its label (unique in this session)."""
        label = f"{prefix}-{secrets.token_hex(4)}"
        init_token(self.conf, label, pin=USER_PIN, so_pin=SO_PIN)
        return label

    def token_dir(self, label: str) -> Path:
        """The directory SoftHSM keeps the token ``label`` in."""
        for entry in self.tokens.iterdir():
            info = entry / "token.object"
            if info.exists() and label.encode() in info.read_bytes():
                return entry
        raise LookupError(f"no SoftHSM token {label}")

    @contextmanager
    def session(self, label: str) -> Iterator[pkcs11.Session]:
        """A logged-in session on token ``label`` in this process, through ztpki's own pool:
        it initializes the module again when the token is newer than the module's start,
        the way every other session of this process expects."""
        uri = Pkcs11Uri(token=label)
        pool = TokenPool(TokenAccess(module=self.module, pin=USER_PIN.encode()), uri, size=1)
        try:
            with pool.session() as pooled:
                yield pooled.session
        finally:
            pool.close()

    def private_keys(self, label: str) -> str:
        """`pkcs11-tool --list-objects --type privkey` of token ``label``, logged in."""
        return self.pkcs11_tool(
            "--token-label", label, "--login", "--pin", USER_PIN, "--list-objects",
            "--type", "privkey",
        ).stdout  # fmt: skip

    def keypair(self, label: str, key_type: str, object_label: str, key_id: str) -> None:
        """A key pair made by `pkcs11-tool --keypairgen` in token ``label`` (as made outside
        ztpki, e.g. on a smart card); ``key_type`` as pkcs11-tool spells it, id in hex."""
        self.pkcs11_tool(
            "--token-label", label, "--login", "--pin", USER_PIN, "--keypairgen",
            "--key-type", key_type, "--label", object_label, "--id", key_id,
        )  # fmt: skip

    def pkcs11_tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """OpenSC's pkcs11-tool against this SoftHSM, logged in as the user."""
        return subprocess.run(
            ["pkcs11-tool", "--module", self.module, *args],
            check=check,
            capture_output=True,
            text=True,
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
        )


def make_softhsm(root: Path) -> SoftHSM:
    """A SoftHSM2 with no token yet, whose tokens live under ``root``."""
    softhsm_config(root)
    return SoftHSM(root=root, module=softhsm_module())


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    """This test session's SoftHSM2, also the one in-process code reaches (SOFTHSM2_CONF)."""
    if shutil.which("softhsm2-util") is None or shutil.which("pkcs11-tool") is None:
        raise RuntimeError("softhsm2-util and pkcs11-tool are missing: run `make system-deps`")
    hsm = make_softhsm(tmp_path_factory.mktemp("softhsm"))
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    yield hsm
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before
