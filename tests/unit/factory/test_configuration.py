"""--param parsing and the CA-client configuration kept in the device memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztpki.errors import ConfigurationError
from ztpki.factory.batch import device_ids, select_ids
from ztpki.factory.configuration import CAClientConfig, parse_parameters
from ztpki.pki.keys import KeySpec


def test_ok_parameters_with_aliases() -> None:
    params = parse_parameters(["key=ec-p384", "validity_days=30", "O=Acme", "ou=Line 1", "c=SE"])
    assert params.key_algorithm is KeySpec.EC_P384
    assert params.validity_days == 30
    assert (params.organization, params.organizational_unit, params.country) == (
        "Acme",
        "Line 1",
        "SE",
    )
    assert parse_parameters([]) == parse_parameters(())


@pytest.mark.parametrize(
    ("items", "match"),
    [
        pytest.param(["key"], "KEY=VALUE", id="fail-no-equals"),
        pytest.param(["colour=red"], "KEY=VALUE", id="fail-unknown-key"),
        pytest.param(["key=dsa-1024"], "unknown key algorithm", id="fail-key-algorithm"),
        pytest.param(["validity=ten"], "number of days", id="fail-validity-text"),
        pytest.param(["validity=0"], "ValidityDays", id="fail-validity-zero"),
        pytest.param(["country=Sweden"], "Country", id="fail-country"),
        pytest.param(["key=ec-p256", "key_algorithm=ec-p384"], "twice", id="fail-twice"),
    ],
)
def test_fail_parameters(items: list[str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_parameters(items)


def test_config_round_trip(tmp_path: Path) -> None:
    config = CAClientConfig("127.0.0.1:7443", tmp_path / "cred", "factory", ("key=ec-p384",))
    stored = {k: v for k, v in config.to_config().items() if v is not None}
    assert CAClientConfig.from_config(stored, device="D1") == CAClientConfig(
        "127.0.0.1:7443", (tmp_path / "cred").resolve(), "factory", ("key=ec-p384",)
    )
    with pytest.raises(ConfigurationError, match="device D1: no CA-client configuration"):
        CAClientConfig.from_config({}, device="D1")
    with pytest.raises(ConfigurationError, match="damaged"):
        CAClientConfig.from_config({**stored, "request_parameters": "x"}, device="D1")


@pytest.mark.parametrize("address", ["localhost", "host:0", "host:99999", ":80"])
def test_fail_bad_address(address: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        CAClientConfig(address, tmp_path)


def test_ok_device_ids() -> None:
    assert device_ids("ACME-{batch}-{n:06d}", count=3, batch="B7") == (
        "ACME-B7-000001",
        "ACME-B7-000002",
        "ACME-B7-000003",
    )
    assert device_ids("D{n}", count=2, batch=None, start=9) == ("D9", "D10")
    assert device_ids("D{n}", count=0, batch=None) == ()


@pytest.mark.parametrize(
    ("pattern", "batch", "match"),
    [
        pytest.param("ACME", None, "must use", id="fail-no-n"),
        pytest.param("{n.real}", None, "must use", id="fail-attribute-access"),
        pytest.param("{n}{x}", None, "must use", id="fail-unknown-field"),
        pytest.param("{batch}-{n}", None, "give --batch", id="fail-batch-missing"),
        pytest.param("X{n:c}", None, "invalid id", id="fail-format-control-chars"),
        pytest.param("a b {n}", None, "invalid id", id="fail-invalid-id"),
        pytest.param("{n", None, "not a valid pattern", id="fail-syntax"),
    ],
)
def test_fail_device_ids(pattern: str, batch: str | None, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        device_ids(pattern, count=20, batch=batch)


def test_select_ids() -> None:
    assert select_ids(["a", "b"], []) == ("a", "b")
    assert select_ids(["a", "b"], ["c", "c", "a"]) == ("c", "a")
    with pytest.raises(ConfigurationError, match="--only"):
        select_ids([], ["no spaces"])
