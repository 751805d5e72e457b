"""A CA's issuing policy: a readable TOML file, applied to every request.

Absent request parameters take the policy's defaults; a parameter outside policy is refused
with UnsupportedParameter, never silently changed. Subject fields follow rules: a field the
policy gives a value is ``fixed`` (a request may only repeat it), one it leaves empty is
``allowed`` (the request may set it), except e-mail, which is ``forbidden`` unless the policy
says otherwise: a request naming an address would get it as an rfc822Name. ``[subject_rules]``
overrides any of these. Validity above the maximum is refused unless ``[validity]
above_max = "clip"``. A `ca`-profile CA issues CA certificates over the enrollment protocol
only when ``[ca_certificates] issue = true``, and then with path length 0 and the name
constraints listed there.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomli_w
from cryptography import x509

from ztpki.casystem.entitlement import NotEntitled, check_dns_pattern, check_ip_range
from ztpki.errors import ConfigurationError, UnsupportedParameter
from ztpki.pki.authority import IssuanceGrant
from ztpki.pki.keys import KeySpec
from ztpki.pki.names import SubjectFields, build_subject, check_device_id
from ztpki.pki.profiles import CertificateProfile

DEFAULT_ALLOWED = tuple(KeySpec)
# policy.toml key -> the request's XML element, for messages.
SUBJECT_FIELDS = {
    "organization": "Organization",
    "organizational_unit": "OrganizationalUnit",
    "locality": "Locality",
    "country": "Country",
    "email": "Email",
}


def _subtree(domain: str) -> str:
    """A permitted DNS subtree: a domain, which covers its subdomains (no wildcard)."""
    if domain.startswith("*"):
        raise ConfigurationError(
            f"permitted_dns {domain[:64]!r}: name a domain (example.com covers its subdomains)"
        )
    return check_dns_pattern(domain)


MAX_CRL_HOURS = 24 * 31


def _check_url(name: str, url: object) -> None:
    """An http(s) URL a relying party can fetch (RFC 5280 4.2.1.13 and 4.2.2.1)."""
    if url is None:
        return
    if not isinstance(url, str):
        raise ConfigurationError(f"policy: [revocation] {name} must be a string URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c in url for c in ' "<>'):
        raise ConfigurationError(
            f"policy: [revocation] {name} {url[:80]!r} must be an http:// URL such as "
            "http://pki.example.com:8080/crl/customer.crl"
        )


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            "policy: [revocation] crl_next_update_hours must be a whole number"
        )
    return value


class FieldRule(StrEnum):
    ALLOWED = "allowed"  # the request may set it; the policy's value is the default
    FIXED = "fixed"  # the policy's value always; a request may only repeat it
    FORBIDDEN = "forbidden"  # never in the certificate; a request naming it is refused


def _rule(subject: SubjectFields, name: str, explicit: FieldRule | str | None) -> FieldRule:
    if explicit is not None:
        return FieldRule(explicit)
    if getattr(subject, name):
        return FieldRule.FIXED
    return FieldRule.FORBIDDEN if name == "email" else FieldRule.ALLOWED


class AboveMax(StrEnum):
    REFUSE = "refuse"
    CLIP = "clip"


@dataclass(frozen=True)
class IssuingPolicy:
    """What one CA issues: profile, validity bounds, key algorithms, default subject."""

    profile: CertificateProfile = CertificateProfile.DEVICE
    default_validity_days: int = 365
    max_validity_days: int = 825
    default_key: KeySpec = KeySpec.EC_P256
    allowed_keys: tuple[KeySpec, ...] = DEFAULT_ALLOWED
    subject: SubjectFields = field(default_factory=SubjectFields)
    allow_csr: bool = True
    # Rules given for some fields; the others get their defaults (see the module docstring).
    subject_rules: tuple[tuple[str, FieldRule], ...] = ()
    above_max: AboveMax = AboveMax.REFUSE
    issue_ca_certificates: bool = False
    permitted_dns: tuple[str, ...] = ()
    permitted_ip: tuple[str, ...] = ()
    # [revocation]: where relying parties find this CA's CRL and OCSP responder (None: the
    # certificates it issues carry no CRL Distribution Point / AIA OCSP entry), and how long
    # each CRL is valid (nextUpdate).
    crl_url: str | None = None
    ocsp_url: str | None = None
    crl_next_update_hours: int = 24

    def __post_init__(self) -> None:
        explicit = dict(self.subject_rules)
        for name in explicit:
            if name not in SUBJECT_FIELDS:
                raise ConfigurationError(
                    f"policy: [subject_rules] has unknown field {name!r}; "
                    f"use {', '.join(SUBJECT_FIELDS)}"
                )
        # Every field's rule, the defaults written out: two policies that behave alike are equal.
        rules = tuple(
            (name, _rule(self.subject, name, explicit.get(name))) for name in SUBJECT_FIELDS
        )
        object.__setattr__(self, "subject_rules", rules)
        for name, rule in rules:
            value = getattr(self.subject, name)
            if rule is FieldRule.FIXED and not value:
                raise ConfigurationError(f"policy: {name} is fixed but [subject] gives no value")
            if rule is FieldRule.FORBIDDEN and value:
                raise ConfigurationError(f"policy: {name} is forbidden but [subject] gives one")
        if self.issue_ca_certificates and not (self.permitted_dns or self.permitted_ip):
            raise ConfigurationError(
                "policy: [ca_certificates] issue = true needs name constraints: list "
                "permitted_dns and/or permitted_ip (an unconstrained CA could name anything)"
            )
        for name in ("crl_url", "ocsp_url"):
            _check_url(name, getattr(self, name))
        if not 0 < self.crl_next_update_hours <= MAX_CRL_HOURS:
            raise ConfigurationError(
                f"policy: [revocation] crl_next_update_hours must be 1 to {MAX_CRL_HOURS} "
                f"(got {self.crl_next_update_hours})"
            )
        if not 0 < self.default_validity_days <= self.max_validity_days:
            raise ConfigurationError(
                "policy: default_days must be positive and at most max_days "
                f"(got {self.default_validity_days} and {self.max_validity_days})"
            )
        if self.default_key not in self.allowed_keys:
            raise ConfigurationError(
                f"policy: default key {self.default_key} is not among the allowed keys"
            )

    def key_spec(self, requested: KeySpec | None) -> KeySpec:
        spec = requested or self.default_key
        if spec not in self.allowed_keys:
            allowed = ", ".join(self.allowed_keys)
            raise UnsupportedParameter(f"key algorithm {spec} is not allowed here; use {allowed}")
        return spec

    def rule(self, name: str) -> FieldRule:
        return dict(self.subject_rules)[name]

    def subject_fields(self, requested: SubjectFields) -> SubjectFields:
        """The subject fields a certificate gets, or NotEntitled for a field the request may
        not set (forbidden, or fixed to another value)."""
        for name, element in SUBJECT_FIELDS.items():
            asked, own = getattr(requested, name), getattr(self.subject, name)
            if asked is None:
                continue
            rule = self.rule(name)
            if rule is FieldRule.FORBIDDEN:
                raise NotEntitled(f"{element} may not appear in a request to this CA (policy)")
            if rule is FieldRule.FIXED and asked != own:
                raise NotEntitled(
                    f"{element} {asked[:64]!r} is not allowed: this CA's policy fixes it to "
                    f"{own!r}; omit {element}"
                )
        return requested.merged_over(self.subject)

    def validity(self, requested_days: int | None, *, now: datetime) -> tuple[datetime, datetime]:
        days = requested_days if requested_days is not None else self.default_validity_days
        if days > self.max_validity_days and self.above_max is AboveMax.CLIP:
            days = self.max_validity_days
        if not 0 < days <= self.max_validity_days:
            raise UnsupportedParameter(
                f"validity of {days} days is outside policy (1 to {self.max_validity_days} days)"
            )
        return now - timedelta(minutes=5), now + timedelta(days=days)

    def grant(
        self,
        device_id: str,
        fields: SubjectFields,
        *,
        validity_days: int | None,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        now: datetime,
    ) -> IssuanceGrant:
        """The issuance grant for one device, or UnsupportedParameter."""
        check_device_id(device_id)
        if (dns_names or ip_addresses) and self.profile is not CertificateProfile.SERVER:
            raise UnsupportedParameter(
                "subject alternative names are only issued by a CA with the server profile"
            )
        not_before, not_after = self.validity(validity_days, now=now)
        merged = self.subject_fields(fields)
        subject = build_subject(device_id, merged, serial_number=device_id)
        return IssuanceGrant(
            subject=subject,
            profile=self.profile,
            not_before=not_before,
            not_after=not_after,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            # Also in the subject (emailAddress), where older relying parties look for it.
            email_addresses=(merged.email,) if merged.email else (),
            crl_url=self.crl_url,
            ocsp_url=self.ocsp_url,
            **self._ca_constraints(),
        )

    def _ca_constraints(self) -> dict[str, Any]:
        """A CA certificate's path length and name constraints, or NotEntitled."""
        if self.profile is not CertificateProfile.CA:
            return {}
        if not self.issue_ca_certificates:
            raise NotEntitled(
                "this CA does not issue CA certificates over the enrollment protocol "
                "(its policy does not allow it)"
            )
        subtrees: list[x509.GeneralName] = [x509.DNSName(d) for d in self.permitted_dns]
        subtrees += [x509.IPAddress(ipaddress.ip_network(n)) for n in self.permitted_ip]
        return {
            "path_length": 0,
            "name_constraints": x509.NameConstraints(
                permitted_subtrees=subtrees, excluded_subtrees=None
            ),
        }

    def to_toml(self) -> dict[str, Any]:
        subject = {
            k: v
            for k, v in {
                "organization": self.subject.organization,
                "organizational_unit": self.subject.organizational_unit,
                "locality": self.subject.locality,
                "country": self.subject.country,
                "email": self.subject.email,
            }.items()
            if v
        }
        data: dict[str, Any] = {
            "profile": self.profile.value,
            "validity": {
                "default_days": self.default_validity_days,
                "max_days": self.max_validity_days,
                "above_max": self.above_max.value,
            },
            "keys": {
                "default": self.default_key.value,
                "allowed": [k.value for k in self.allowed_keys],
            },
            "subject": subject,
            # Every field's rule written out, so the file says what a request may set.
            "subject_rules": {name: self.rule(name).value for name in SUBJECT_FIELDS},
            "issuance": {"allow_csr": self.allow_csr},
        }
        revocation: dict[str, Any] = {"crl_next_update_hours": self.crl_next_update_hours}
        if self.crl_url:
            revocation["crl_url"] = self.crl_url
        if self.ocsp_url:
            revocation["ocsp_url"] = self.ocsp_url
        data["revocation"] = revocation
        if self.profile is CertificateProfile.CA:
            data["ca_certificates"] = {
                "issue": self.issue_ca_certificates,
                "permitted_dns": list(self.permitted_dns),
                "permitted_ip": list(self.permitted_ip),
            }
        return data

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> IssuingPolicy:
        try:
            validity = data.get("validity", {})
            keys = data.get("keys", {})
            subject = data.get("subject", {})
            issuance = data.get("issuance", {})
            rules = data.get("subject_rules", {})
            ca_certs = data.get("ca_certificates", {})
            revocation = data.get("revocation", {})
            return cls(
                profile=CertificateProfile.parse(data.get("profile", "device")),
                default_validity_days=int(validity.get("default_days", 365)),
                max_validity_days=int(validity.get("max_days", 825)),
                default_key=KeySpec.parse(keys.get("default", "ec-p256")),
                allowed_keys=tuple(KeySpec.parse(k) for k in keys.get("allowed", DEFAULT_ALLOWED)),
                subject=SubjectFields(**{k: str(v) for k, v in subject.items()}),
                allow_csr=bool(issuance.get("allow_csr", True)),
                subject_rules=tuple((str(k), FieldRule(v)) for k, v in rules.items()),
                above_max=AboveMax(validity.get("above_max", "refuse")),
                issue_ca_certificates=ca_certs.get("issue", False) is True,
                permitted_dns=tuple(_subtree(d) for d in ca_certs.get("permitted_dns", ())),
                permitted_ip=tuple(check_ip_range(n) for n in ca_certs.get("permitted_ip", ())),
                crl_url=revocation.get("crl_url"),
                ocsp_url=revocation.get("ocsp_url"),
                crl_next_update_hours=_whole(revocation.get("crl_next_update_hours", 24)),
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"policy file is invalid: {exc.message}") from None
        except (TypeError, ValueError, UnsupportedParameter) as exc:
            raise ConfigurationError(f"policy file is invalid: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> IssuingPolicy:
        try:
            return cls.from_toml(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read policy {path}: {exc}") from None
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}: {exc.message}; fix it and retry") from None

    def save(self, path: Path) -> None:
        header = (
            "# Issuing policy of this CA. Edit and restart `ztpki ca serve` to apply.\n"
            "# profile: device | server | client | manifest-signer | ca\n"
            "# A device holds at most one live certificate per CA; reissue supersedes it.\n"
            "# subject_rules: allowed (a request may set it) | fixed (the policy's value only)\n"
            "#   | forbidden (never). validity.above_max: refuse | clip.\n"
            "# [revocation] crl_url / ocsp_url: put into every certificate issued (CRL\n"
            "#   Distribution Point, AIA OCSP); crl_next_update_hours: CRL validity.\n"
        )
        path.write_text(header + tomli_w.dumps(self.to_toml()), encoding="utf-8")
