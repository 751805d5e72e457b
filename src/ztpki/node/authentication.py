"""The authentication module (21): who is at the other end of the TLS connection.

The TLS layer has already checked the client's chain against every certificate the node
trusts (Python 3.11 exposes only the leaf afterwards). This module takes the leaf's raw DER,
verifies it again with the path validator, and says which kind of identity it is:

* TEMPORARY: a factory (birth) certificate that chains to a configured factory trust anchor;
* OPERATIONAL: a certificate issued by the customer CA behind one of the node's EST labels.

Either way it checks the validity period, key usage and EKU clientAuth, an optional CRL of
the issuing CA, and reads the device id from the subject. Raw DER in keeps the HTTP server
swappable in one file.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography import x509

from ztpki.errors import ConfigurationError, MalformedInput, NotAuthenticated, VerificationFailed
from ztpki.pki.chain import verify_client_chain
from ztpki.pki.names import DEVICE_ID_PATTERN, device_id_of
from ztpki.pki.pem import fingerprint_sha256, load_certificate_der, serial_hex

log = logging.getLogger(__name__)


class IdentityKind(StrEnum):
    TEMPORARY = "temporary"
    OPERATIONAL = "operational"


@dataclass(frozen=True)
class ClientIdentity:
    """An authenticated TLS client: a device, by its temporary or its operational certificate."""

    kind: IdentityKind
    device_id: str
    fingerprint: str  # SHA-256 of the certificate DER, lower-case hex
    serial: str  # lower-case hex, as the stores keep serials
    certificate: x509.Certificate = field(repr=False)
    label: str | None = None  # the EST label whose CA issued an operational certificate


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _anchors_of(certs: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    # A bundle's roots are its anchors; a bundle without a root (only the issuing CA) makes
    # its own certificates the anchors, and the TLS layer is told to accept partial chains.
    roots = tuple(c for c in certs if _self_signed(c))
    return roots or tuple(certs)


@dataclass(frozen=True)
class FactoryTrust:
    """The factory trust bundles of every manufacturer the customer buys from."""

    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    partial_chain: bool  # some bundle has no root: its CA certificates are anchors themselves

    @classmethod
    def from_bundles(cls, bundles: Iterable[Sequence[x509.Certificate]]) -> FactoryTrust:
        anchors: list[x509.Certificate] = []
        intermediates: list[x509.Certificate] = []
        partial = False
        for bundle in bundles:
            if not bundle:
                raise ConfigurationError("a factory trust bundle holds no certificate")
            bundle_anchors = _anchors_of(bundle)
            partial = partial or not any(_self_signed(c) for c in bundle)
            anchors += [c for c in bundle_anchors if c not in anchors]
            intermediates += [
                c for c in bundle if c not in bundle_anchors and c not in intermediates
            ]
        if not anchors:
            raise ConfigurationError("no factory trust bundle is configured")
        return cls(tuple(anchors), tuple(intermediates), partial)


@dataclass(frozen=True)
class CustomerCA:
    """The CA behind one EST label: its certificate first, then its parents up to the root."""

    label: str
    chain: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.chain:
            raise ConfigurationError(f"the chain of EST label {self.label} holds no certificate")

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        return _anchors_of(self.chain)


class AuthenticationModule:
    """Verifies a client certificate (raw DER) and names the device it identifies."""

    def __init__(
        self,
        factory: FactoryTrust,
        customer: Sequence[CustomerCA],
        *,
        crls: Sequence[x509.CertificateRevocationList] = (),
    ) -> None:
        self.factory = factory
        self.customer = tuple(customer)
        self._crls = _checked_crls(crls, [*factory.anchors, *factory.intermediates])
        self._boundaries = sorted(
            {t for cert in self.tls_trust_store() for t in _validity_boundaries(cert)}
        )
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()

    def tls_trust_store(self) -> list[x509.Certificate]:
        """Every certificate the TLS layer should accept client chains to (and build with)."""
        certs: list[x509.Certificate] = []
        for cert in (
            *self.factory.anchors,
            *self.factory.intermediates,
            *(c for ca in self.customer for c in ca.chain),
        ):
            if cert not in certs:
                certs.append(cert)
        return certs

    @property
    def partial_chain(self) -> bool:
        return self.factory.partial_chain or any(
            not any(_self_signed(c) for c in ca.chain) for ca in self.customer
        )

    def authenticate(self, der: bytes, *, now: datetime) -> ClientIdentity:
        """The identity in a client certificate, or NotAuthenticated with the reason.

        A certificate that verified is remembered (bounded, least recently used first out)
        with the stretch of time in which no validity period of it or of any configured CA
        certificate begins or ends: inside that stretch every input of the verification is the
        same, so its result is too. A device sends the same certificate on several requests.
        """
        at = _utc(now)
        remembered = self._verified.get(der)
        if remembered is not None:
            if remembered.holds_at(at):
                self._verified.move_to_end(der)
                return remembered.identity
            del self._verified[der]
        identity = self._verify(der, now=now)
        stretch = self._stable_stretch(identity.certificate, at)
        if stretch is not None:
            self._verified[der] = _Verified(identity, *stretch)
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return identity

    def _stable_stretch(
        self, leaf: x509.Certificate, at: datetime
    ) -> tuple[datetime, datetime] | None:
        # A second away from each boundary, so no rounding of instants to whole seconds by
        # the validator can put two instants of one stretch on different sides of a boundary.
        boundaries = sorted({*self._boundaries, *_validity_boundaries(leaf)})
        index = bisect.bisect_right(boundaries, at)
        earliest = _moved(boundaries[index - 1], _MARGIN) if index > 0 else _DAWN
        latest = _moved(boundaries[index], -_MARGIN) if index < len(boundaries) else _DUSK
        return (earliest, latest) if earliest <= at <= latest else None

    def _verify(self, der: bytes, *, now: datetime) -> ClientIdentity:
        try:
            leaf = load_certificate_der(der)
        except MalformedInput:
            raise NotAuthenticated("the client certificate is not valid DER X.509") from None
        issuers = [ca for ca in self.customer if ca.certificate.subject == leaf.issuer]
        problems: list[str] = []
        for ca in issuers:
            try:
                path = verify_client_chain(leaf, ca.chain, ca.anchors, now=now)
            except VerificationFailed as exc:
                problems.append(exc.message)
                continue
            # Only the label's own CA may vouch for an operational identity, not a sibling CA
            # under the same customer root.
            if len(path) > 1 and path[1] == ca.certificate:
                return self._identity(IdentityKind.OPERATIONAL, leaf, label=ca.label)
        # Not the customer's (a factory CA may even bear the same name as a customer CA).
        try:
            path = verify_client_chain(
                leaf, self.factory.intermediates, self.factory.anchors, now=now
            )
        except VerificationFailed as exc:
            problems.append(exc.message)
            raise NotAuthenticated(
                "the client certificate does not chain to a configured factory trust anchor "
                f"or customer CA: {'; '.join(problems)}"
            ) from None
        self._check_revocation(leaf, path)
        return self._identity(IdentityKind.TEMPORARY, leaf, label=None)

    def _check_revocation(self, leaf: x509.Certificate, path: Sequence[x509.Certificate]) -> None:
        if len(path) < 2:
            return
        issuer = path[1]
        for crl in self._crls:
            if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                continue
            if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
                raise NotAuthenticated(
                    f"the client certificate (serial {serial_hex(leaf)}) is revoked by its CA"
                )

    @staticmethod
    def _identity(
        kind: IdentityKind, leaf: x509.Certificate, *, label: str | None
    ) -> ClientIdentity:
        device_id = device_id_of(leaf)
        if device_id is None or not DEVICE_ID_PATTERN.fullmatch(device_id):
            raise NotAuthenticated(
                "the client certificate names no device id (subject serialNumber or CN)"
            )
        return ClientIdentity(
            kind=kind,
            device_id=device_id,
            fingerprint=fingerprint_sha256(leaf),
            serial=serial_hex(leaf),
            certificate=leaf,
            label=label,
        )


# Verified client certificates remembered: a few per device being customized at once.
VERIFIED_CACHE_SIZE = 4096
_MARGIN = timedelta(seconds=1)
_DAWN = datetime.min.replace(tzinfo=UTC)
_DUSK = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Verified:
    identity: ClientIdentity
    earliest: datetime
    latest: datetime

    def holds_at(self, at: datetime) -> bool:
        return self.earliest <= at <= self.latest


def _utc(now: datetime) -> datetime:
    # The validator reads a naive instant as UTC; so does this module.
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _moved(instant: datetime, by: timedelta) -> datetime:
    try:
        return instant + by
    except OverflowError:  # a validity period ending in 9999: the stretch ends there
        return instant


def _validity_boundaries(cert: x509.Certificate) -> tuple[datetime, datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def _checked_crls(
    crls: Sequence[x509.CertificateRevocationList], issuers: Sequence[x509.Certificate]
) -> tuple[x509.CertificateRevocationList, ...]:
    """Each CRL must be signed by a factory CA the node trusts; anything else is a mistake."""
    for crl in crls:
        signer = next(
            (
                c
                for c in issuers
                if c.subject == crl.issuer and crl.is_signature_valid(c.public_key())  # type: ignore[arg-type]
            ),
            None,
        )
        if signer is None:
            raise ConfigurationError(
                f"CRL of {crl.issuer.rfc4514_string()} is not signed by a configured factory CA"
            )
    return tuple(crls)
