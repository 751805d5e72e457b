"""Root CA key update (pki/rollover.py): the three certificates of RFC 4210 4.4, checked by
signature, and found again in a bundle only when every signature holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from ztpki.errors import ConfigurationError
from ztpki.pki.authority import CertificateAuthority, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.rollover import RootKeyUpdate, find_update, is_self_signed, update_root_key

NOW = datetime(2026, 12, 8, tzinfo=UTC)
SUBJECT = build_subject("croot", SubjectFields(organization="Customer X"), serial_number=None)


def _rollover() -> RootKeyUpdate:
    old_key = generate_private_key(KeySpec.EC_P256)
    old = create_self_signed_ca(
        old_key, SUBJECT, now=NOW - timedelta(days=30), validity=timedelta(days=365)
    )
    return update_root_key(
        old_key, old, generate_private_key(KeySpec.EC_P384), now=NOW, validity=timedelta(days=730)
    )


def test_ok_links_verify_under_each_root() -> None:
    update = _rollover()
    update.new_with_old.verify_directly_issued_by(update.old_with_old)
    update.old_with_new.verify_directly_issued_by(update.new_with_new)
    assert is_self_signed(update.new_with_new) and not is_self_signed(update.new_with_old)
    assert update.new_with_new.public_key() == update.new_with_old.public_key()
    assert update.old_with_new.public_key() == update.old_with_old.public_key()
    for link in (*update.links, update.new_with_new):
        assert link.subject == link.issuer == SUBJECT
        assert link.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # oldWithNew is the old root, vouched for by the new key: the old root's validity.
    assert update.old_with_new.not_valid_after_utc == update.old_with_old.not_valid_after_utc
    assert update.new_with_old.not_valid_after_utc <= update.old_with_old.not_valid_after_utc


def test_ok_find_update_from_the_old_root_only() -> None:
    update = _rollover()
    bundle = (update.new_with_new, update.old_with_old, *update.links)
    assert find_update(update.old_with_old, bundle) == update
    assert find_update(update.new_with_new, bundle) is None  # the current root


def test_fail_find_update_with_a_forged_link() -> None:
    update = _rollover()
    stranger_key = generate_private_key(KeySpec.EC_P256)
    stranger = CertificateAuthority(
        name="x",
        key=stranger_key,
        certificate=create_self_signed_ca(
            stranger_key, SUBJECT, now=NOW, validity=timedelta(days=9)
        ),
    )
    forged = update_root_key(
        stranger.key,
        stranger.certificate,
        generate_private_key(KeySpec.EC_P256),
        now=NOW,
        validity=timedelta(days=90),
    )
    # A newWithOld the old key never signed links nothing to the old root.
    bundle = (forged.new_with_new, forged.new_with_old, forged.old_with_new)
    assert find_update(update.old_with_old, bundle) is None


def test_fail_rollover_refusals() -> None:
    update = _rollover()
    key = generate_private_key(KeySpec.EC_P256)
    old = create_self_signed_ca(key, SUBJECT, now=NOW, validity=timedelta(days=9))
    with pytest.raises(ConfigurationError, match="new key"):
        update_root_key(key, old, key, now=NOW, validity=timedelta(days=9))
    with pytest.raises(ConfigurationError, match="not the key"):
        update_root_key(
            generate_private_key(KeySpec.EC_P256), old, key, now=NOW, validity=timedelta(days=9)
        )
    with pytest.raises(ConfigurationError, match="only a root"):
        update_root_key(
            key,
            update.new_with_old,
            generate_private_key(KeySpec.EC_P256),
            now=NOW,
            validity=timedelta(days=9),
        )
    with pytest.raises(ConfigurationError, match="expire before the old one"):
        update_root_key(
            key, old, generate_private_key(KeySpec.EC_P256), now=NOW, validity=timedelta(days=8)
        )
    with pytest.raises(ConfigurationError, match="expired"):
        update_root_key(
            key,
            old,
            generate_private_key(KeySpec.EC_P256),
            now=NOW + timedelta(days=10),
            validity=timedelta(days=9),
        )
