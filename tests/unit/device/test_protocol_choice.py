"""Which enrollment protocol `device renew` / `device agent` speak: --protocol if given, else
the one the device's configuration recorded with its identity, else EST."""

from __future__ import annotations

from typing import Any

import pytest

from ztpki.cli.device_agent import _protocol
from ztpki.device.cmp_activation import EnrollmentProtocol
from ztpki.errors import ConfigurationError


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
    ],
)
def test_ok_flag_then_recorded_then_est(
    given: str | None, config: dict[str, Any], expected: EnrollmentProtocol
) -> None:
    assert _protocol(_Memory(config), given) is expected  # type: ignore[arg-type]


def test_fail_unknown_recorded_protocol_names_the_remedy() -> None:
    with pytest.raises(ConfigurationError, match="give --protocol est or --protocol cmp"):
        _protocol(_Memory({"protocol": "scep\n"}), None)  # type: ignore[arg-type]
