"""ztpki's CMP client reading a root CA key update (device/cmp_root_update.py): the new root is
trusted only through newWithOld under the root the device has, every certificate checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from ztpki.device.cmp_root_update import (
    follow_in,
    keep_followed,
    trusted_root,
    verify_root_update,
)
from ztpki.errors import VerificationFailed
from ztpki.pki.authority import create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.rollover import RootKeyUpdate, update_root_key
from ztpki.protocol.cmp.root_update import RootUpdateValue, encode_root_update

NOW = datetime(2026, 12, 8, tzinfo=UTC)
NAME = build_subject("croot", SubjectFields(organization="Customer X"), serial_number=None)


def _rollover(days: int = 365) -> RootKeyUpdate:
    key = generate_private_key(KeySpec.EC_P256)
    old = create_self_signed_ca(key, NAME, now=NOW - timedelta(days=1), validity=timedelta(days=30))
    new = generate_private_key(KeySpec.EC_P256)
    return update_root_key(key, old, new, now=NOW, validity=timedelta(days=days))


def _value(update: RootKeyUpdate, *, old_with_new: bool = True) -> bytes:
    der = [c.public_bytes(Encoding.DER) for c in (update.new_with_new, update.new_with_old)]
    own = update.old_with_new.public_bytes(Encoding.DER) if update.old_with_new else None
    return encode_root_update(RootUpdateValue(der[0], der[1], own if old_with_new else None))


def test_ok_update_checked_and_returned() -> None:
    update = _rollover()
    assert verify_root_update(update.old_with_old, _value(update), now=NOW) == update
    bare = verify_root_update(update.old_with_old, _value(update, old_with_new=False), now=NOW)
    assert bare is not None and bare.old_with_new is None  # optional on the wire
    assert verify_root_update(update.old_with_old, None, now=NOW) is None  # current root


def test_fail_pieces_of_two_rollovers() -> None:
    one, two = _rollover(), _rollover()
    # newWithNew of another rollover than the newWithOld: not the key newWithOld certifies.
    mixed = RootUpdateValue(
        two.new_with_new.public_bytes(Encoding.DER), one.new_with_old.public_bytes(Encoding.DER)
    )
    with pytest.raises(VerificationFailed, match="not the self-signed certificate"):
        verify_root_update(one.old_with_old, encode_root_update(mixed), now=NOW)
    # oldWithNew of another old key.
    assert two.old_with_new is not None
    crossed = RootUpdateValue(
        one.new_with_new.public_bytes(Encoding.DER),
        one.new_with_old.public_bytes(Encoding.DER),
        two.old_with_new.public_bytes(Encoding.DER),
    )
    with pytest.raises(VerificationFailed, match="oldWithNew"):
        verify_root_update(one.old_with_old, encode_root_update(crossed), now=NOW)
    # The device's root is not the one the update rolls from.
    with pytest.raises(VerificationFailed, match="not signed by the root the device trusts"):
        verify_root_update(two.old_with_old, _value(one), now=NOW)


def test_fail_update_outside_its_validity() -> None:
    update = _rollover()
    # newWithOld ends with the old root (30 days): a month later it vouches for nothing.
    with pytest.raises(VerificationFailed, match="newWithOld is not valid now"):
        verify_root_update(update.old_with_old, _value(update), now=NOW + timedelta(days=60))


def test_ok_followed_root_replaces_the_old_and_survives_a_renewal() -> None:
    update = _rollover()
    issuing = _rollover().new_with_old  # a certificate that is no root: the issuing CA here
    held = follow_in((issuing, update.old_with_old), update)
    assert held == (issuing, update.new_with_new, *update.links)
    assert trusted_root(held) == update.new_with_new
    # A renewal's answer chains to the old root again: the followed root is kept.
    assert keep_followed((issuing, update.old_with_old), held) == held
    # Nothing followed: the answer's certificates are kept as they are.
    assert keep_followed((issuing, update.old_with_old), (update.old_with_old,)) == (
        issuing,
        update.old_with_old,
    )
    # Without oldWithNew the old root stays, behind the new one (which is trusted).
    bare = RootKeyUpdate(update.old_with_old, update.new_with_new, update.new_with_old, None)
    kept = follow_in((update.old_with_old,), bare)
    assert kept == (update.new_with_new, update.new_with_old, update.old_with_old)
    assert trusted_root(kept) == update.new_with_new
