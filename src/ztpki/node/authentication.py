"""The authentication module (21): who is at the other end of the TLS connection.

The TLS layer has already checked the client's chain against every certificate the node
trusts (Python 3.11 exposes only the leaf afterwards). This module takes the leaf's raw DER,
verifies it again with the path validator, and says which kind of identity it is:

* TEMPORARY: a factory (birth) certificate that chains to a configured factory trust anchor,
  with the manufacturers whose trust bundle alone carries its path (authorization then checks
  that the manufacturer that listed the device is one of them);
* OPERATIONAL: a certificate issued by the customer CA behind one of the node's EST labels.

Either way it checks the validity period, key usage and EKU clientAuth, and reads the device
id from the subject. Revocation of a temporary certificate is not checked here: a certificate
of a genuine factory CA is an authenticated identity, and the refusal of a revoked one is an
authorization decision, audited (``node.factory_crls``, ``authorization.check_revocation``).
A certificate with no EKU at all passes here marked (``client_auth_stated``): whether that
is enough is the EST label's policy (``authorization.check_purpose``). Raw DER in keeps the
HTTP server swappable in one file.

For a certificate the node's own TLS layer verified (the direct listener), the module may
take a shortcut that reaches the same verdict with one signature check instead of a whole
path: see ``AuthenticationModule._by_known_issuer``. A certificate from a proxy header is
always verified in full.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter, OrderedDict
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
    # A device that proved the CMP shared secret the operator set for it (MAC-based
    # protection, ztpki.node.cmp_mac): it customizes as with a temporary certificate.
    SHARED_SECRET = "shared-secret"  # noqa: S105 (a kind of identity, not a secret)


@dataclass(frozen=True)
class ClientIdentity:
    """An authenticated TLS client: a device, by its temporary or its operational certificate."""

    kind: IdentityKind
    device_id: str
    fingerprint: str  # SHA-256 of the certificate DER, lower-case hex
    serial: str  # lower-case hex, as the stores keep serials
    certificate: x509.Certificate | None = field(repr=False)  # None: SHARED_SECRET
    label: str | None = None  # the EST label whose CA issued an operational certificate
    # A temporary certificate: the manufacturers whose trust bundle carries its path.
    manufacturers: frozenset[str] = frozenset()
    # False: the certificate has no extendedKeyUsage at all, which RFC 5280 reads as "any
    # purpose" and TLS stacks accept; the node refuses it unless the label's policy allows.
    client_auth_stated: bool = True
    # A temporary certificate: the factory CA certificate that signed it (its revocation is
    # that CA's word, checked by authorization against the CA's CRL).
    issuer: x509.Certificate | None = field(default=None, repr=False)


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _anchors_of(certs: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    # A bundle's roots are its anchors; a bundle without a root (only the issuing CA) makes
    # its own certificates the anchors, and the TLS layer is told to accept partial chains.
    roots = tuple(c for c in certs if _self_signed(c))
    return roots or tuple(certs)


@dataclass(frozen=True)
class FactoryBundle:
    """One manufacturer's factory trust bundle."""

    manufacturer: str
    certificates: frozenset[x509.Certificate]
    anchors: frozenset[x509.Certificate]

    def carries(self, path: Sequence[x509.Certificate]) -> bool:
        """The verified path leaf..anchor runs through this bundle's certificates alone, from
        the leaf's issuer up to one of its anchors (so the leaf chains to this manufacturer,
        not merely to a root some other manufacturer's CA also hangs from)."""
        for cert in path[1:]:
            if cert not in self.certificates:
                return False
            if cert in self.anchors:
                return True
        return False


@dataclass(frozen=True)
class FactoryTrust:
    """The factory trust bundles of every manufacturer the customer buys from."""

    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    partial_chain: bool  # some bundle has no root: its CA certificates are anchors themselves
    manufacturers: tuple[FactoryBundle, ...] = ()

    def manufacturers_of(self, path: Sequence[x509.Certificate]) -> frozenset[str]:
        return frozenset(b.manufacturer for b in self.manufacturers if b.carries(path))

    @classmethod
    def from_manufacturers(
        cls, bundles: Sequence[tuple[str, Sequence[x509.Certificate]]]
    ) -> FactoryTrust:
        """The trust of named bundles: (manufacturer, its bundle) pairs."""
        trust = cls.from_bundles(bundle for _, bundle in bundles)
        named = tuple(
            FactoryBundle(name, frozenset(bundle), frozenset(_anchors_of(bundle)))
            for name, bundle in bundles
        )
        return cls(trust.anchors, trust.intermediates, trust.partial_chain, named)

    @classmethod
    def from_bundles(cls, bundles: Iterable[Sequence[x509.Certificate]]) -> FactoryTrust:
        """The trust of bundles no manufacturer is named for (identities carry none)."""
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
    ) -> None:
        self.factory = factory
        self.customer = tuple(customer)
        trusted = self.tls_trust_store()
        self._boundaries = sorted({t for cert in trusted for t in _validity_boundaries(cert)})
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        # Configured certificates whose subject no other configured certificate bears: for a
        # leaf naming one of them as issuer, every path the verifier could build starts there.
        subjects = Counter(cert.subject for cert in trusted)
        self._sole_issuer = {c.subject: c for c in trusted if subjects[c.subject] == 1}
        self._factory_certs = frozenset((*factory.anchors, *factory.intermediates))
        # (label or None for the factory trust, issuer) -> when its path up was seen verified.
        self._issuer_paths: dict[tuple[str | None, x509.Certificate], tuple[datetime, datetime]]
        self._issuer_paths = {}
        # A factory issuer -> the manufacturers whose bundle carried its path up.
        self._issuer_makers: dict[x509.Certificate, frozenset[str]] = {}

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

    def authenticate(
        self, der: bytes, *, now: datetime, chain_verified_by_tls: bool = False
    ) -> ClientIdentity:
        """The identity in a client certificate, or NotAuthenticated with the reason.

        A certificate that verified is remembered (bounded, least recently used first out)
        with the stretch of time in which no validity period of it or of any configured CA
        certificate begins or ends: inside that stretch every input of the verification is the
        same, so its result is too. A device sends the same certificate on several requests.

        ``chain_verified_by_tls``: the node's own TLS layer took this certificate from the
        handshake and verified its chain against ``tls_trust_store()`` (the direct listener,
        never a proxy header). Only then may the module take its known-issuer shortcut, and
        only a result of full verification is ever reused for other callers.
        """
        at = _utc(now)
        remembered = self._verified.get(der)
        if remembered is not None:
            if remembered.holds_at(at) and (remembered.full or chain_verified_by_tls):
                self._verified.move_to_end(der)
                return remembered.identity
            del self._verified[der]
        identity = self._by_known_issuer(der, at=at, now=now) if chain_verified_by_tls else None
        full = identity is None
        if identity is None:
            identity = self._verify(der, now=now)
        stretch = self._stable_stretch(at, identity.certificate)
        if stretch is not None:
            self._verified[der] = _Verified(identity, *stretch, full=full)
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return identity

    def _by_known_issuer(self, der: bytes, *, at: datetime, now: datetime) -> ClientIdentity | None:
        """The verdict of ``_verify`` for a leaf whose issuer's own path was verified before.

        Why this is the same verdict: full verification builds leaf -> issuer -> ... -> anchor from
        configured certificates only. When exactly one configured certificate X bears the leaf's
        issuer name, every such path starts leaf -> X, so ``_verify`` tries the same label first
        (the first label whose CA is named so, which must then be X) or, with no such label, the
        factory trust, and finds the same issuer (whose CRL authorization checks). The path splits
        in two: the leaf's part (its signature by X, validity, key usage, EKU and the other
        end-entity rules, X's CA rules as its issuer) is checked here in full, with X as the only
        anchor; X's part up to an anchor depends on no leaf, and a full verification through X saw
        it pass within the same stretch of time, in which no configured certificate's validity
        begins or ends. Name constraints are the one rule above X that reads the leaf, so an issuer
        path that carries any is never remembered. Anything that does not verify here goes to full
        verification, which alone refuses and words the reason. The TLS layer verified the chain as
        well; this shortcut is still taken only then (``chain_verified_by_tls``), so a certificate
        from a proxy header always gets the full path.
        """
        try:
            leaf = load_certificate_der(der)
        except MalformedInput:
            return None
        issuer = self._sole_issuer.get(leaf.issuer)
        if issuer is None:
            return None
        label = next((ca for ca in self.customer if ca.certificate.subject == leaf.issuer), None)
        if label is None and issuer not in self._factory_certs:
            return None
        if not self._issuer_path_holds(None if label is None else label.label, issuer, at):
            return None
        try:
            verify_client_chain(leaf, (), (issuer,), now=now)
        except VerificationFailed:
            return None
        if label is not None:
            return self._identity(IdentityKind.OPERATIONAL, leaf, label=label.label)
        makers = self._issuer_makers.get(issuer)
        if makers is None:
            return None
        return self._identity(
            IdentityKind.TEMPORARY, leaf, label=None, manufacturers=makers, issuer=issuer
        )

    def _issuer_path_holds(self, trust: str | None, issuer: x509.Certificate, at: datetime) -> bool:
        stretch = self._issuer_paths.get((trust, issuer))
        return stretch is not None and stretch[0] <= at <= stretch[1]

    def _remember_issuer_path(
        self, trust: str | None, path: Sequence[x509.Certificate], now: datetime
    ) -> None:
        """After a full verification: the issuer's path up holds for this stretch of time."""
        if len(path) < 2 or self._sole_issuer.get(path[1].subject) != path[1]:
            return
        if any(_constrains_names(cert) for cert in path[1:]):
            return
        stretch = self._stable_stretch(_utc(now))
        if stretch is not None:
            if trust is None:
                self._issuer_makers[path[1]] = self.factory.manufacturers_of(path)
            self._issuer_paths[(trust, path[1])] = stretch

    def _stable_stretch(
        self, at: datetime, leaf: x509.Certificate | None = None
    ) -> tuple[datetime, datetime] | None:
        # A second away from each boundary, so no rounding of instants to whole seconds by
        # the validator can put two instants of one stretch on different sides of a boundary.
        boundaries = self._boundaries
        if leaf is not None:
            boundaries = sorted({*boundaries, *_validity_boundaries(leaf)})
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
                identity = self._identity(IdentityKind.OPERATIONAL, leaf, label=ca.label)
                self._remember_issuer_path(ca.label, path, now)
                return identity
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
        identity = self._identity(
            IdentityKind.TEMPORARY,
            leaf,
            label=None,
            manufacturers=self.factory.manufacturers_of(path),
            issuer=path[1] if len(path) > 1 else None,
        )
        self._remember_issuer_path(None, path, now)
        return identity

    @staticmethod
    def _identity(
        kind: IdentityKind,
        leaf: x509.Certificate,
        *,
        label: str | None,
        manufacturers: frozenset[str] = frozenset(),
        issuer: x509.Certificate | None = None,
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
            manufacturers=manufacturers,
            client_auth_stated=_states_purpose(leaf),
            issuer=issuer,
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
    full: bool = True  # False: found by the known-issuer shortcut (TLS-verified callers only)

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


def _has_extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bool:
    try:
        cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return False
    return True


def _states_purpose(cert: x509.Certificate) -> bool:
    # Any EKU that reaches here names clientAuth: the TLS layer and the path validator refuse
    # an EKU without it. What is left to tell apart is a certificate with no EKU at all.
    return _has_extension(cert, x509.ExtendedKeyUsage)


def _constrains_names(cert: x509.Certificate) -> bool:
    return _has_extension(cert, x509.NameConstraints)


def _validity_boundaries(cert: x509.Certificate) -> tuple[datetime, datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc
