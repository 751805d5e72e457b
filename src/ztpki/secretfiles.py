"""Files that hold secrets, and where passphrases come from.

Secret files are created 0600 with O_EXCL semantics through a temporary name, fsynced and
renamed into place so a crash never leaves half a key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ztpki.errors import ConfigurationError

MIN_PASSPHRASE = 8


def write_private_file(path: Path, data: bytes) -> None:
    """Write data to path with mode 0600, atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a non-secret file (certificates, policy) atomically, mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def resolve_passphrase(
    *,
    passphrase_file: Path | None,
    env_var: str,
    insecure_no_passphrase: bool = False,
    what: str,
) -> bytes | None:
    """The passphrase protecting `what`, from a file or the environment.

    None only with insecure_no_passphrase, which prints a loud warning: it exists for demos.
    """
    if passphrase_file is not None:
        try:
            value = passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read passphrase file {passphrase_file}: {exc.strerror}"
            ) from None
    elif os.environ.get(env_var):
        value = os.environ[env_var].encode()
    elif insecure_no_passphrase:
        # Straight to stderr, not through logging: `--log-level error` must not hide it.
        print(
            f"WARNING: INSECURE: {what} is stored WITHOUT a passphrase "
            "(--insecure-no-passphrase); anyone who can read the file holds the key. "
            "Use this only for demos.",
            file=sys.stderr,
            flush=True,
        )
        return None
    else:
        raise ConfigurationError(
            f"{what} needs a passphrase: give --passphrase-file FILE or set {env_var}"
        )
    if len(value) < MIN_PASSPHRASE:
        raise ConfigurationError(
            f"the passphrase for {what} must have at least {MIN_PASSPHRASE} characters"
        )
    return value
