"""Files ztpki writes: through a fresh temporary file (O_EXCL | O_NOFOLLOW, unpredictable
name), renamed into place; a symbolic link planted at the target or the temporary name is
refused and nothing is written through it. Real symlinks on a real file system."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from ztpki import secretfiles
from ztpki.errors import ConfigurationError
from ztpki.secretfiles import write_private_file, write_public_file

Writer = Callable[[Path, bytes], None]
WRITERS = [
    pytest.param(write_private_file, 0o600, id="private"),
    pytest.param(write_public_file, 0o644, id="public"),
]


@pytest.mark.parametrize(("write", "mode"), WRITERS)
def test_ok_written_whole_with_its_mode_and_nothing_left_beside(
    tmp_path: Path, write: Writer, mode: int
) -> None:
    path = tmp_path / "dir" / "key.pem"
    write(path, b"first")
    write(path, b"second")
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.listdir(path.parent) == ["key.pem"]


@pytest.mark.parametrize(("write", "mode"), WRITERS)
def test_fail_symlink_planted_at_the_target(tmp_path: Path, write: Writer, mode: int) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "key.pem"
    path.symlink_to(victim)
    with pytest.raises(ConfigurationError, match="is a symbolic link") as refused:
        write(path, b"secret key")
    assert str(path) in refused.value.message
    assert victim.read_bytes() == b"precious"  # nothing written through the link
    assert path.is_symlink() and sorted(os.listdir(tmp_path)) == ["key.pem", "victim"]


@pytest.mark.parametrize(("write", "mode"), WRITERS)
def test_fail_symlink_planted_at_the_temporary_name(
    tmp_path: Path, write: Writer, mode: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name is unpredictable; pretend the attacker guessed it, to show what O_EXCL does.
    path = tmp_path / "key.pem"
    guessed = tmp_path / ".key.pem.guessed.tmp"
    monkeypatch.setattr(secretfiles, "_temporary_name", lambda _path: guessed)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    guessed.symlink_to(victim)
    with pytest.raises(ConfigurationError, match=r"temporary file .* exists already"):
        write(path, b"secret key")
    assert victim.read_bytes() == b"precious"
    assert not path.exists() and guessed.is_symlink()
    # A dangling link (to a file the attacker wants created) is refused the same way.
    guessed.unlink()
    guessed.symlink_to(tmp_path / "created-by-attacker")
    with pytest.raises(ConfigurationError):
        write(path, b"secret key")
    assert not (tmp_path / "created-by-attacker").exists()


def test_ok_temporary_names_are_unpredictable(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    names = {secretfiles._temporary_name(path).name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(".key.pem.") and n.endswith(".tmp") for n in names)


def test_ok_temporary_file_is_removed_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(secretfiles.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        write_private_file(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["key.pem"]
