"""The operator's CMP shared-secret file: private, a usable length, never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztpki.errors import ConfigurationError
from ztpki.node.cmp_secret_operations import read_shared_secret


def _file(tmp_path: Path, data: bytes, mode: int) -> Path:
    path = tmp_path / "device.secret"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_ok_private_file_its_newline_dropped(tmp_path: Path) -> None:
    assert (
        read_shared_secret(_file(tmp_path, b"0123456789abcdef!\n", 0o600)) == b"0123456789abcdef!"
    )


@pytest.mark.parametrize(
    ("data", "mode", "why"),
    [
        (b"0123456789abcdef", 0o644, "chmod 600"),
        (b"0123456789abcdef", 0o640, "chmod 600"),
        (b"short", 0o600, "16 to 1024 bytes"),
        (b"x" * 2000, 0o600, "16 to 1024 bytes"),
    ],
)
def test_fail_loose_or_unusable_file_never_echoed(
    tmp_path: Path, data: bytes, mode: int, why: str
) -> None:
    with pytest.raises(ConfigurationError, match=why) as refused:
        read_shared_secret(_file(tmp_path, data, mode))
    assert data[:8].decode() not in refused.value.message


def test_fail_symbolic_link_or_missing(tmp_path: Path) -> None:
    target = _file(tmp_path, b"0123456789abcdef", 0o600)
    link = tmp_path / "link.secret"
    link.symlink_to(target)
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_shared_secret(link)
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_shared_secret(tmp_path / "absent")
