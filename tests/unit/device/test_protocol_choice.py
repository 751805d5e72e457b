"""Which enrollment protocol `device activate` / `renew` / `agent` speak: --protocol if given,
else the one the device's configuration recorded with its identity, else CMP for a device whose
keys are in a token, else EST; and the key a token device asks for."""

from __future__ import annotations

from typing import Any

import pytest

from ztpki.cli.device_agent import _key_mode, _protocol
from ztpki.device.activation import KeyMode
from ztpki.device.cmp_activation import EnrollmentProtocol
from ztpki.device.key_store import check_token_enrollment
from ztpki.errors import ConfigurationError

TOKEN = "pkcs11:token=device;object=ACME-1"


class _Memory:
    device_id = "ACME-1"

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config

    def config(self) -> dict[str, Any]:
        return dict(self._config)


@pytest.mark.parametrize(
    ("given", "config", "expected"),
    [
        (None, {}, EnrollmentProtocol.EST),  # never enrolled: EST
        (None, {"protocol": "cmp"}, EnrollmentProtocol.CMP),  # as it customized
        ("est", {"protocol": "cmp"}, EnrollmentProtocol.EST),  # the flag overrides
        ("CMP", {"protocol": "est"}, EnrollmentProtocol.CMP),
        (None, {"key_token": TOKEN}, EnrollmentProtocol.CMP),  # a token device signs over CMP
        ("est", {"key_token": TOKEN}, EnrollmentProtocol.EST),  # asked for: refused later
    ],
)
def test_ok_flag_then_recorded_then_est(
    given: str | None, config: dict[str, Any], expected: EnrollmentProtocol
) -> None:
    assert _protocol(_Memory(config), given) is expected  # type: ignore[arg-type]


def test_fail_unknown_recorded_protocol_names_the_remedy() -> None:
    with pytest.raises(ConfigurationError, match="give --protocol est or --protocol cmp"):
        _protocol(_Memory({"protocol": "scep\n"}), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("asked", list(KeyMode))
def test_ok_a_token_device_asks_for_a_key_made_in_its_token(asked: KeyMode) -> None:
    token_device = _Memory({"key_token": TOKEN})
    assert _key_mode(token_device, asked) is KeyMode.SIMPLEENROLL  # type: ignore[arg-type]
    assert _key_mode(_Memory({}), asked) is asked  # type: ignore[arg-type]


def test_fail_a_token_device_is_refused_what_cannot_keep_its_key_in_the_token() -> None:
    token_device = _Memory({"key_token": TOKEN})
    with pytest.raises(ConfigurationError, match="--protocol cmp"):
        check_token_enrollment(token_device, cmp=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="add --key-on-device"):
        check_token_enrollment(token_device, cmp=True, key_on_device=False)  # type: ignore[arg-type]
    check_token_enrollment(token_device, cmp=True)  # type: ignore[arg-type]
    check_token_enrollment(_Memory({}), cmp=False, key_on_device=False)  # type: ignore[arg-type]
