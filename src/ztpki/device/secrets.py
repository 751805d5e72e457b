"""Where a device's unique secret comes from: the passphrase its private keys are encrypted with.

The device memory asks a :class:`SecretProvider` for the secret each time it encrypts or
decrypts a key, so the secret can live in a root-only file, the environment, or (later) a
hardware token. Providers raise ``ConfigurationError`` with a message that names where the
secret was expected and never the secret itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from ztpki.device.atomic import FILE_MODE, fsync_dir
from ztpki.errors import ConfigurationError
from ztpki.secretfiles import read_private_file

SECRET_BYTES = 32
MIN_SECRET_BYTES = 16


@runtime_checkable
class SecretProvider(Protocol):
    """A source of the device-unique secret; a PKCS#11 token can implement it too."""

    def secret(self) -> bytes: ...


class FileSecretProvider:
    """The secret is the content of a file only its owner may read (mode 0600 or stricter).

    By default the device keeps it as ``<device dir>/secret``; a file outside the device
    directory, readable only by root, keeps it away from a copy of the directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileSecretProvider({str(self.path)!r})"

    def generate(self) -> None:
        """Create the file with fresh random bytes; refuses to overwrite an existing secret."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, FILE_MODE)
        except FileExistsError:
            raise ConfigurationError(
                f"secret file {self.path} already exists; it is never overwritten"
            ) from None
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create secret file {self.path}: {exc.strerror}"
            ) from None
        try:
            os.write(fd, os.urandom(SECRET_BYTES))
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise ConfigurationError(
                f"cannot write secret file {self.path}: {exc.strerror}"
            ) from None
        os.close(fd)
        fsync_dir(self.path.parent)

    def secret(self) -> bytes:
        try:
            data = read_private_file(self.path, limit=4096)
        except FileNotFoundError:
            raise ConfigurationError(
                f"secret file {self.path} is missing; open the device with the secret "
                "provider it was created with"
            ) from None
        if len(data) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"secret file {self.path} holds fewer than {MIN_SECRET_BYTES} bytes"
            )
        return data


class EnvSecretProvider:
    """The secret is the UTF-8 value of an environment variable (for containers and tests)."""

    def __init__(self, var: str) -> None:
        if not var:
            raise ValueError("environment variable name must not be empty")
        self.var = var

    def __repr__(self) -> str:
        return f"EnvSecretProvider({self.var!r})"

    def secret(self) -> bytes:
        value = os.environ.get(self.var)
        if value is None:
            raise ConfigurationError(f"environment variable {self.var} holding the secret is unset")
        data = value.encode("utf-8")
        if len(data) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"environment variable {self.var} holds fewer than {MIN_SECRET_BYTES} bytes"
            )
        return data
