"""Files that hold secrets, and where passphrases come from.

Both writers here go through a temporary file beside the target, created with
``O_EXCL | O_NOFOLLOW`` under an unpredictable name, then renamed into place in one step, so
a crash never leaves half a key and a symbolic link planted by another local user can never
redirect the write (one at the target itself is refused). Secret files are created 0600 and
fsynced with their directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from pathlib import Path

from ztpki.errors import ConfigurationError

MIN_PASSPHRASE = 8


def _temporary_name(path: Path) -> Path:
    # Unpredictable, so no one can prepare anything at it in advance.
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def _refuse_symlink(path: Path) -> None:
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    if is_link:
        # The rename below would replace the link rather than write through it; a link where
        # ztpki keeps its own file is still someone's attempt to redirect it.
        raise ConfigurationError(
            f"refusing to write {path}: it is a symbolic link, not a file ztpki wrote; "
            "remove the link (and check who planted it), then run the command again"
        )


def _write_new_file(path: Path, data: bytes, *, mode: int, durable: bool) -> None:
    """Replace path with data through a fresh temporary file: atomic, never via a link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_symlink(path)
    tmp = _temporary_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        raise ConfigurationError(
            f"refusing to write {path}: its temporary file {tmp.name} exists already (a "
            "planted file or symbolic link); remove it and run the command again"
        ) from None
    try:
        try:
            os.fchmod(fd, mode)  # exact, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_private_file(path: Path, data: bytes) -> None:
    """Write data to path with mode 0600, atomically and durably; never through a link."""
    _write_new_file(path, data, mode=0o600, durable=True)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a non-secret file (certificates, policy) atomically, mode 0644; never via a link."""
    _write_new_file(path, data, mode=0o644, durable=False)


def read_private_file(path: Path, *, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file only its owner may read (mode 0600 or
    stricter), opened without following a link; ConfigurationError naming the file, never
    its content. FileNotFoundError passes through: the caller says what a missing one means."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigurationError(f"cannot read secret file {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigurationError(f"secret file {path} is not a regular file")
        if mode & 0o077:
            raise ConfigurationError(
                f"secret file {path} is readable by others "
                f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
            )
        return os.read(fd, limit)
    except OSError as exc:
        raise ConfigurationError(f"cannot read secret file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def resolve_passphrase(
    *,
    passphrase_file: Path | None,
    env_var: str,
    insecure_no_passphrase: bool = False,
    what: str,
    minimum: int = MIN_PASSPHRASE,
) -> bytes | None:
    """The passphrase protecting `what`, from a file or the environment.

    None only with insecure_no_passphrase, which prints a loud warning: it exists for demos.
    ``minimum`` is the rule for new keys; a caller opening an existing key passes 0 and lets
    the key say whether the passphrase is right.
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
    if len(value) < minimum:
        raise ConfigurationError(
            f"the passphrase for {what} must have at least {minimum} characters"
        )
    return value
