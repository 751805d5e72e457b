"""The operator's CMP shared-secret file (private, a usable length, never echoed) and the
label a secret is bound to."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import hashes

from ztpki.errors import ConfigurationError
from ztpki.node.authentication import ClientIdentity, IdentityKind
from ztpki.node.cmp_mac import MAC_BODIES, MacKey, authenticate_mac, check_secret_label
from ztpki.node.cmp_secret_operations import read_shared_secret
from ztpki.protocol.cmp import BadMessageCheck, BodyType, CMPNotAuthorized
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


class _NoRegister:
    """A register nothing may reach: the refusals below come before any lookup."""

    async def cmp_secret(self, device_id: str) -> object:
        raise AssertionError(f"the register was asked for {device_id}'s secret")


@pytest.mark.parametrize("body_type", sorted(set(BodyType) - MAC_BODIES, key=lambda b: b.value))
def test_fail_only_an_enrollment_may_be_mac_protected(body_type: BodyType) -> None:
    """kur, rr, genm (and every answer type) need the device's signature: refused before
    the register is asked for a secret, so nothing is looked up or changed."""
    label = SimpleNamespace(name="meters", config=SimpleNamespace(cmp_mac_protection=True))
    message = SimpleNamespace(body=SimpleNamespace(type=body_type))
    with pytest.raises(BadMessageCheck, match="must be signed with the device's certificate"):
        asyncio.run(
            authenticate_mac(_NoRegister(), message, label, tls_certificate=False)  # type: ignore[arg-type]
        )


def test_fail_mac_protection_off_for_the_label_even_for_an_ir() -> None:
    label = SimpleNamespace(name="default", config=SimpleNamespace(cmp_mac_protection=False))
    message = SimpleNamespace(body=SimpleNamespace(type=BodyType.IR))
    with pytest.raises(BadMessageCheck, match="not enabled for label default"):
        asyncio.run(
            authenticate_mac(_NoRegister(), message, label, tls_certificate=False)  # type: ignore[arg-type]
        )
