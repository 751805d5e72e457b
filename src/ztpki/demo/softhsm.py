"""`ztpki demo --hsm`: the factory's and the customer's CA keys in SoftHSM2 tokens.

A SoftHSM2 of the demo's own (its configuration and token directory under the work
directory), one token per CA system, initialized with `softhsm2-util`; every CA of a system
gets its key generated in that system's token (`ca init --pkcs11`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from ztpki.errors import ConfigurationError
from ztpki.secretfiles import write_private_file

# Where Debian and Ubuntu put the module (the first is a link to the second on amd64).
SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)


def softhsm_module() -> str:
    """The installed SoftHSM2 module; ConfigurationError saying how to install it."""
    for path in SOFTHSM_MODULES:
        if Path(path).is_file():
            return path
    raise ConfigurationError(
        "SoftHSM2 is not installed: `apt-get install softhsm2` (or `make system-deps`)"
    )


def softhsm_config(root: Path) -> Path:
    """A SoftHSM2 configuration keeping its tokens under ``root``; its path."""
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n"
    )
    return conf


def init_token(conf: Path, label: str, *, pin: str, so_pin: str) -> None:
    """A fresh token ``label`` in the SoftHSM2 that ``conf`` configures."""
    if shutil.which("softhsm2-util") is None:
        raise ConfigurationError("softhsm2-util is missing: `apt-get install softhsm2`")
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            pin,
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )


def demo_tokens(root: Path, labels: tuple[str, ...]) -> dict[str, str]:
    """A SoftHSM2 under ``root`` with one token per label; the environment `ztpki` needs.

    The user PIN is random, kept 0600 in ``root``/secrets like the demo's passphrases.
    """
    module = softhsm_module()
    conf = softhsm_config(root / "softhsm")
    pin, so_pin = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    write_private_file(root / "secrets" / "ztpki_pkcs11_pin.txt", (pin + "\n").encode())
    for label in labels:
        init_token(conf, label, pin=pin, so_pin=so_pin)
    return {"SOFTHSM2_CONF": str(conf), "ZTPKI_PKCS11_MODULE": module, "ZTPKI_PKCS11_PIN": pin}
