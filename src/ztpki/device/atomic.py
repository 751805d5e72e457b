"""Crash-safe file primitives for the device memory: atomic replace, directory fsync, a lock.

A file is replaced by writing the new content beside it, fsyncing it, renaming it over the
old name in one step and fsyncing the directory. A crash at any instant therefore leaves
either the old or the new file whole. Functions raise ``OSError``; the caller turns it into
a ``DeviceMemoryError`` that names the device.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ztpki.secretfiles import sync_directory

# Make the directory's entries (creations, renames) durable: one implementation for the
# device memory and every other file ztpki writes.
fsync_dir = sync_directory

StepHook = Callable[[str], None]
"""Test-only fault injection: called with each step name as the step completes."""

STEPS = ("tmp-open", "tmp-written", "tmp-fsynced", "renamed", "dir-fsynced")
"""The steps of :func:`write_atomic`, in order; the new content is in place from "renamed"."""

TMP_SUFFIX = ".tmp"
FILE_MODE = 0o600
DIR_MODE = 0o700


class NotDurable(OSError):
    """The new content is in place, but fsyncing the directory failed: a power loss may undo it."""


def _noop(_step: str) -> None:
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(
    path: Path,
    data: bytes,
    *,
    tmp_name: str | None = None,
    on_step: StepHook | None = None,
) -> None:
    """Replace ``path`` with ``data`` (mode 0600) so that readers see the old or the new file.

    The new content goes to ``tmp_name`` (default ``<name>.tmp``) in the same directory first.
    On an ``OSError`` the temporary file is removed and the old file is untouched, except for
    :class:`NotDurable`, raised when only the final directory fsync failed. Callers serialise
    writers to the same path (see :func:`locked`).
    """
    step = on_step or _noop
    tmp = path.with_name(tmp_name or path.name + TMP_SUFFIX)
    if not tmp.name.endswith(TMP_SUFFIX):
        raise ValueError(f"temporary file name must end with {TMP_SUFFIX}: {tmp.name}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left behind by a crashed writer
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, FILE_MODE)
    try:
        try:
            step("tmp-open")
            os.fchmod(fd, FILE_MODE)  # exact, whatever the umask
            _write_all(fd, data)
            step("tmp-written")
            os.fsync(fd)
        finally:
            os.close(fd)
        step("tmp-fsynced")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    step("renamed")
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise NotDurable(exc.errno, exc.strerror) from exc
    step("dir-fsynced")


def read_file(path: Path) -> bytes:
    """The content of a regular file, refusing to follow a symbolic link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        return file.read()


def remove_stale(directory: Path) -> list[str]:
    """Delete temporary files a crashed writer left; returns their names.

    Only call while holding the directory's lock, or a live writer's file could vanish.
    """
    removed = []
    for entry in directory.iterdir():
        if entry.name.endswith(TMP_SUFFIX) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            removed.append(entry.name)
    if removed:
        fsync_dir(directory)
    return removed


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_file`` (created 0600) for the block.

    ``flock`` locks belong to the open file, so this excludes other threads as well as
    other processes; the kernel drops the lock when a holder dies.
    """
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
