"""Root CA key update (RFC 4210 section 4.4): the three certificates a rollover publishes.

    newWithNew   the new self-signed root: the new key, signed by itself
    newWithOld   the new key, signed by the old key: a party that trusts only the old root
                 verifies it with that root and may then trust newWithNew (RFC 9483 4.3.2)
    oldWithNew   the old key, signed by the new key: a party that trusts only the new root
                 verifies with it what the old key signed before the rollover

All three keep the root's subject name, so that what either key signed names the same issuer
and a path through a link certificate is a path RFC 5280 accepts. ``RootLinks`` sorts a
bundle of certificates back into these roles; nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ztpki.errors import ConfigurationError
from ztpki.pki.authority import CLOCK_SKEW, certificate_builder, create_self_signed_ca
from ztpki.pki.keys import PublicKey, keys_match
from ztpki.pki.profiles import CertificateProfile, profile_extensions
from ztpki.pki.signer import SigningKey, sign_certificate


@dataclass(frozen=True)
class RootKeyUpdate:
    """One rollover's certificates (RFC 4210 4.4, RFC 9480 RootCaKeyUpdateContent)."""

    old_with_old: x509.Certificate
    new_with_new: x509.Certificate
    new_with_old: x509.Certificate
    old_with_new: x509.Certificate | None  # optional on the wire (RFC 9480 2.14)

    @property
    def links(self) -> tuple[x509.Certificate, ...]:
        if self.old_with_new is None:
            return (self.new_with_old,)
        return (self.new_with_old, self.old_with_new)


def _link(
    subject: x509.Name,
    public_key: PublicKey,
    signer: SigningKey,
    *,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A CA certificate for ``public_key`` under the root's name, signed by ``signer``."""
    builder = certificate_builder(subject, subject, public_key, not_before, not_after)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
    )
    for extension, critical in profile_extensions(CertificateProfile.CA, public_key):
        builder = builder.add_extension(extension, critical=critical)
    return sign_certificate(builder, signer)


def is_self_signed(certificate: x509.Certificate) -> bool:
    """Signed by its own key (not merely self-issued, as a link certificate is)."""
    if certificate.subject != certificate.issuer:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def update_root_key(
    old_key: SigningKey,
    old_certificate: x509.Certificate,
    new_key: SigningKey,
    *,
    now: datetime,
    validity: timedelta,
) -> RootKeyUpdate:
    """newWithNew, newWithOld and oldWithNew for a root moving from ``old_key`` to ``new_key``.

    oldWithNew keeps the old root's validity (RFC 4210 4.4: it is the old root, vouched for by
    the new key); newWithOld ends when the old root does, since the old key vouches for nothing
    beyond its own lifetime.
    """
    if not is_self_signed(old_certificate):
        raise ConfigurationError(
            "only a root CA (a self-signed certificate) rolls its key over with link "
            "certificates; a subordinate CA gets a new certificate from its parent instead"
        )
    if not keys_match(old_key, old_certificate.public_key()):
        raise ConfigurationError("the old key is not the key of the old root certificate")
    if keys_match(new_key, old_certificate.public_key()):
        raise ConfigurationError("a rollover needs a new key, not the root's current one")
    subject = old_certificate.subject
    new_with_new = create_self_signed_ca(new_key, subject, now=now, validity=validity)
    old_end = old_certificate.not_valid_after_utc
    if old_end <= now:
        raise ConfigurationError(
            "the old root has expired: nothing it signed is trusted any more, so there is "
            "nothing to link; create a new root with `ztpki ca init` instead"
        )
    if new_with_new.not_valid_after_utc <= old_end:
        raise ConfigurationError(
            f"the new root would expire before the old one ({old_end:%Y-%m-%d}): a rollover "
            "must extend the root's life; give a longer --validity-days"
        )
    new_with_old = _link(
        subject,
        new_key.public_key(),
        old_key,
        not_before=now - CLOCK_SKEW,
        not_after=min(old_end, new_with_new.not_valid_after_utc),
    )
    old_with_new = _link(
        subject,
        old_key.public_key(),  # the old certificate's key (checked above)
        new_key,
        not_before=old_certificate.not_valid_before_utc,
        not_after=old_end,
    )
    return RootKeyUpdate(old_certificate, new_with_new, new_with_old, old_with_new)


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Signed by ``issuer``'s key under ``issuer``'s name (any bad signature or part: False)."""
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def find_update(
    old_root: x509.Certificate, bundle: tuple[x509.Certificate, ...]
) -> RootKeyUpdate | None:
    """The rollover away from ``old_root`` among ``bundle``'s certificates, each one checked
    by signature: newWithOld verifies under the old root, newWithNew under itself with the key
    newWithOld certifies, oldWithNew under newWithNew. None: no complete rollover from it."""
    for new_with_old in bundle:
        if is_self_signed(new_with_old) or not issued_by(new_with_old, old_root):
            continue
        if keys_match_certificates(new_with_old, old_root):
            continue
        for new_with_new in bundle:
            if not (
                is_self_signed(new_with_new)
                and keys_match_certificates(new_with_new, new_with_old)
                # The direction: a rollover extends the root's life (update_root_key), so the
                # pair read backwards (oldWithNew taken for newWithOld) is no rollover.
                and new_with_new.not_valid_after_utc > old_root.not_valid_after_utc
            ):
                continue
            for old_with_new in bundle:
                if (
                    not is_self_signed(old_with_new)
                    and keys_match_certificates(old_with_new, old_root)
                    and issued_by(old_with_new, new_with_new)
                ):
                    return RootKeyUpdate(old_root, new_with_new, new_with_old, old_with_new)
    return None


def keys_match_certificates(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_key() == b.public_key()
