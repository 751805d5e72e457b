"""Following a root CA key update over CMP (RFC 9483 section 4.3.2), as a device.

The device names the root it trusts (genm id-it-rootCaCert); the node answers with no value
(that root is current) or with newWithNew, newWithOld and oldWithNew. The new root is trusted
only through the old one: newWithOld must verify under the root the device already trusts
and certify the very key of newWithNew, whose own self-signature must hold too; oldWithNew,
when present, must certify the old root's key under the new one. Anything less is refused
with VerificationFailed and the device keeps its old root.

What the device keeps of an update it accepted (``follow_in``): among its CA certificates
the old root gives way to newWithNew, followed by newWithOld and oldWithNew. The links are
self-issued, so they never enter a TLS or CMP chain the device sends; oldWithNew lets what
the old key certified (the issuing CA above the device's certificate) chain to the new root.
Without oldWithNew (optional on the wire) the old root stays too, after the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ztpki.device.cmp_client import CMPClient
from ztpki.errors import MalformedInput, VerificationFailed
from ztpki.pki.rollover import RootKeyUpdate, find_update, is_self_signed
from ztpki.protocol.cmp import InfoTypeAndValue
from ztpki.protocol.cmp.root_update import (
    ID_IT_ROOT_CA_CERT,
    ID_IT_ROOT_CA_KEY_UPDATE,
    decode_root_update,
)


def _load(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise MalformedInput(f"the node's {what} is not a DER certificate") from None


def _signed(certificate: x509.Certificate, issuer: x509.Certificate, refusal: str) -> None:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise VerificationFailed(f"the node's {refusal}") from None


def _check_time(certificate: x509.Certificate, what: str, now: datetime) -> None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise VerificationFailed(f"the node's {what} is not valid now")


def verify_root_update(
    trusted_root: x509.Certificate, value: bytes | None, *, now: datetime
) -> RootKeyUpdate | None:
    """The rollover from ``trusted_root`` the node announced, every certificate of it checked;
    None when the node says the root is current."""
    if value is None:
        return None
    update = decode_root_update(value)
    new_with_new = _load(update.new_with_new, "newWithNew")
    if update.new_with_old is None:
        raise VerificationFailed(
            "the node's root CA update carries no newWithOld: the new root is not vouched for "
            "by the root the device trusts, so it is not trusted"
        )
    new_with_old = _load(update.new_with_old, "newWithOld")
    _signed(new_with_old, trusted_root, "newWithOld is not signed by the root the device trusts")
    if new_with_old.public_key() != new_with_new.public_key() or not is_self_signed(new_with_new):
        raise VerificationFailed(
            "the node's newWithNew is not the self-signed certificate of the key newWithOld "
            "certifies"
        )
    if new_with_new.subject != trusted_root.subject:
        raise VerificationFailed("the node's new root bears another name than the old root")
    _check_time(new_with_old, "newWithOld", now)
    _check_time(new_with_new, "newWithNew", now)
    old_with_new = None
    if update.old_with_new is not None:
        old_with_new = _load(update.old_with_new, "oldWithNew")
        _signed(old_with_new, new_with_new, "oldWithNew is not signed by the new root")
        if old_with_new.public_key() != trusted_root.public_key():
            raise VerificationFailed(
                "the node's oldWithNew certifies another key than the old root's"
            )
    return RootKeyUpdate(trusted_root, new_with_new, new_with_old, old_with_new)


async def follow_root_update(
    client: CMPClient, trusted_root: x509.Certificate, *, now: datetime
) -> RootKeyUpdate | None:
    """genm rootCaCert with the root the device trusts; the checked rollover, or None."""
    asked = InfoTypeAndValue(
        ID_IT_ROOT_CA_CERT, trusted_root.public_bytes(serialization.Encoding.DER)
    )
    items = await client.general([asked])
    found = [i for i in items if i.oid == ID_IT_ROOT_CA_KEY_UPDATE]
    if len(found) != 1:
        raise MalformedInput("the node's genp does not answer id-it-rootCaCert")
    return verify_root_update(trusted_root, found[0].value, now=now)


def trusted_root(ca_certificates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The root the device trusts among its CA certificates: the self-signed one, or the
    latest to expire when an update without oldWithNew left two."""
    roots = [c for c in ca_certificates if is_self_signed(c)]
    return max(roots, key=lambda c: c.not_valid_after_utc, default=None)


def follow_in(
    ca_certificates: Sequence[x509.Certificate], update: RootKeyUpdate
) -> tuple[x509.Certificate, ...]:
    """``ca_certificates`` with ``update``'s old root replaced by its new root and links."""
    followed = (update.new_with_new, *update.links)
    if update.old_with_new is None:
        followed += (update.old_with_old,)  # nothing else links the old key to the new root
    kept: list[x509.Certificate] = []
    for certificate in ca_certificates:
        for one in followed if certificate == update.old_with_old else (certificate,):
            if one not in kept:
                kept.append(one)
    return tuple(kept)


def keep_followed(
    ca_certificates: Sequence[x509.Certificate], held: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """A new identity's CA certificates (an answer chaining to a root the device has moved
    away from) with the update the device already follows, found again among ``held`` (its
    current CA certificates) by signature, applied."""
    result = tuple(ca_certificates)
    for root in [c for c in result if is_self_signed(c)]:
        update = find_update(root, tuple(held))
        if update is not None:
            result = follow_in(result, update)
    return result
