"""A CA's issuing policy: a readable TOML file, applied to every request.

Absent request parameters take the policy's defaults; a parameter outside policy is refused
with UnsupportedParameter, never silently changed.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w

from ztpki.errors import ConfigurationError, UnsupportedParameter
from ztpki.pki.authority import IssuanceGrant
from ztpki.pki.keys import KeySpec
from ztpki.pki.names import SubjectFields, build_subject, check_device_id
from ztpki.pki.profiles import CertificateProfile

DEFAULT_ALLOWED = tuple(KeySpec)


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

    def __post_init__(self) -> None:
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

    def validity(self, requested_days: int | None, *, now: datetime) -> tuple[datetime, datetime]:
        days = requested_days if requested_days is not None else self.default_validity_days
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
        merged = fields.merged_over(self.subject)
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
        )

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
        return {
            "profile": self.profile.value,
            "validity": {
                "default_days": self.default_validity_days,
                "max_days": self.max_validity_days,
            },
            "keys": {
                "default": self.default_key.value,
                "allowed": [k.value for k in self.allowed_keys],
            },
            "subject": subject,
            "issuance": {"allow_csr": self.allow_csr},
        }

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> IssuingPolicy:
        try:
            validity = data.get("validity", {})
            keys = data.get("keys", {})
            subject = data.get("subject", {})
            issuance = data.get("issuance", {})
            return cls(
                profile=CertificateProfile.parse(data.get("profile", "device")),
                default_validity_days=int(validity.get("default_days", 365)),
                max_validity_days=int(validity.get("max_days", 825)),
                default_key=KeySpec.parse(keys.get("default", "ec-p256")),
                allowed_keys=tuple(KeySpec.parse(k) for k in keys.get("allowed", DEFAULT_ALLOWED)),
                subject=SubjectFields(**{k: str(v) for k, v in subject.items()}),
                allow_csr=bool(issuance.get("allow_csr", True)),
            )
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
        )
        path.write_text(header + tomli_w.dumps(self.to_toml()), encoding="utf-8")
