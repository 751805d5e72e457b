"""The CA-client configuration the loading station loads into a device (patent Fig. 3, B42).

It lives in the device memory's config as plain values: the CA system's address, where the
CA-client credential is, the CA name and the optional request parameters as KEY=VALUE text
(the same text the operator typed after --param).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztpki.casystem.client import parse_address
from ztpki.errors import ConfigurationError, MalformedInput, UnsupportedParameter
from ztpki.pki.keys import KeySpec
from ztpki.protocol.enrollment import EnrollmentParameters

# Device config keys (the device memory's config.json).
CA_ADDRESS = "ca_address"
CA_CREDENTIAL = "ca_client_credential"
CA_NAME = "ca_name"
REQUEST_PARAMETERS = "request_parameters"
REQUEST_SIGNAL = "request_signal"
MODEL = "model"
BATCH = "batch"
MANUFACTURED_AT = "manufactured_at"

# --param names (and short aliases) -> EnrollmentParameters fields.
_PARAMETERS = {
    "key_algorithm": "key_algorithm",
    "key": "key_algorithm",
    "validity_days": "validity_days",
    "validity": "validity_days",
    "organization": "organization",
    "o": "organization",
    "organizational_unit": "organizational_unit",
    "ou": "organizational_unit",
    "locality": "locality",
    "l": "locality",
    "country": "country",
    "c": "country",
    "email": "email",
}
PARAMETER_NAMES = tuple(sorted(set(_PARAMETERS.values())))


def _split(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    field = _PARAMETERS.get(name.strip().lower().replace("-", "_"))
    if not sep or field is None:
        allowed = ", ".join(PARAMETER_NAMES)
        raise ConfigurationError(
            f"--param {item[:64]!r} is not KEY=VALUE with KEY one of: {allowed}"
        )
    return field, value.strip()


def _value(field: str, value: str, item: str) -> object:
    if field == "key_algorithm":
        try:
            return KeySpec.parse(value)
        except UnsupportedParameter as exc:
            raise ConfigurationError(f"--param {item[:64]!r}: {exc.message}") from None
    if field == "validity_days":
        if not value.isdigit():
            raise ConfigurationError(f"--param {item[:64]!r}: the value is not a number of days")
        return int(value)
    return value


def parse_parameters(items: Sequence[str]) -> EnrollmentParameters:
    """EnrollmentParameters from KEY=VALUE texts; ConfigurationError names the bad one."""
    values: dict[str, Any] = {}
    for item in items:
        field, value = _split(item)
        if field in values:
            raise ConfigurationError(f"--param {field} is given twice")
        values[field] = _value(field, value, item)
    try:
        return EnrollmentParameters(**values)
    except (MalformedInput, ValueError, TypeError) as exc:
        raise ConfigurationError(f"--param: {exc}") from None


@dataclass(frozen=True)
class CAClientConfig:
    """Where and how a first CA-client requests: loaded into the device by the station."""

    ca_address: str
    credential: Path
    ca_name: str | None = None
    parameters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        parse_address(self.ca_address)
        self.request_parameters()  # refuse bad --param text before anything is written

    @property
    def address(self) -> tuple[str, int]:
        return parse_address(self.ca_address)

    def request_parameters(self) -> EnrollmentParameters:
        return parse_parameters(self.parameters)

    def to_config(self) -> dict[str, Any]:
        """The device config entries (None removes a key)."""
        return {
            CA_ADDRESS: self.ca_address,
            CA_CREDENTIAL: str(self.credential.resolve()),
            CA_NAME: self.ca_name,
            REQUEST_PARAMETERS: list(self.parameters) or None,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, device: str) -> CAClientConfig:
        address, credential = config.get(CA_ADDRESS), config.get(CA_CREDENTIAL)
        if not isinstance(address, str) or not isinstance(credential, str):
            raise ConfigurationError(
                f"device {device}: no CA-client configuration is loaded (ca_address, "
                "ca_client_credential); run `ztpki factory load` first"
            )
        name = config.get(CA_NAME)
        params = config.get(REQUEST_PARAMETERS) or []
        if (name is not None and not isinstance(name, str)) or not isinstance(params, list):
            raise ConfigurationError(f"device {device}: the CA-client configuration is damaged")
        return cls(address, Path(credential), name, tuple(str(p) for p in params))
