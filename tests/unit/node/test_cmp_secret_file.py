"""The operator's CMP shared-secret file (private, a usable length, never echoed) and the
label a secret is bound to."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import hashes

from ztpki.errors import ConfigurationError
from ztpki.node.authentication import ClientIdentity, IdentityKind
from ztpki.node.cmp_mac import MacKey, check_secret_label
from ztpki.node.cmp_secret_operations import read_shared_secret
from ztpki.protocol.cmp import CMPNotAuthorized
from ztpki.protocol.cmp.mac import MacParameters, MacScheme


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
    with pytest.raises(ConfigurationError, match="does not exist"):
        read_shared_secret(tmp_path / "absent")


def test_fail_secret_bound_to_another_label() -> None:
    identity = ClientIdentity(IdentityKind.SHARED_SECRET, "m1", "ab" * 32, "", None)
    params = MacParameters(MacScheme.PASSWORD_BASED_MAC, b"s" * 16, 500, hashes.SHA256, hashes.SHA1)
    bound = MacKey(params, b"0123456789abcdef", b"m1", "meters")
    meters, default = SimpleNamespace(name="meters"), SimpleNamespace(name="default")
    check_secret_label(identity, meters, bound)  # type: ignore[arg-type]
    check_secret_label(identity, default, replace(bound, bound_label=None))  # type: ignore[arg-type]
    with pytest.raises(CMPNotAuthorized, match="set for label meters"):
        check_secret_label(identity, default, bound)  # type: ignore[arg-type]
