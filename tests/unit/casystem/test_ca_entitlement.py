"""Entitlement matching: which CAs, device ids, DNS names and IP addresses a CA-client may ask
for. Properties with hypothesis, the documented examples as plain cases."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztpki.casystem.entitlement import (
    ChangeMode,
    NotEntitled,
    authorize,
    build_entitlement,
    change_entitlement,
    check_device_id_pattern,
    check_dns_pattern,
    check_ip_range,
    device_id_allowed,
    dns_name_allowed,
    ip_allowed,
)
from ztpki.errors import ConfigurationError, NotAuthorized
from ztpki.store.records import ClientEntitlement

ID_CHARS = "ABCXYZabcxyz0189._-"
ids = st.text(ID_CHARS, min_size=1, max_size=30)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=2, max_size=4).map(".".join)


# ------------------------------------------------------------------ device ids


@given(prefix=ids, rest=ids)
def test_ok_prefix_pattern_matches_every_id_with_the_prefix(prefix: str, rest: str) -> None:
    assert device_id_allowed([f"{prefix}*"], prefix + rest)
    assert device_id_allowed([f"{prefix}*"], prefix)  # * is any run, the empty one too


@given(device_id=ids, other=ids)
def test_fail_exact_pattern_matches_only_itself(device_id: str, other: str) -> None:
    assert device_id_allowed([device_id], device_id)
    assert device_id_allowed([device_id], other) == (other == device_id)


@given(device_id=ids)
def test_ok_star_alone_is_any_device_and_nothing_matches_no_pattern(device_id: str) -> None:
    assert device_id_allowed(["*"], device_id)
    assert not device_id_allowed([], device_id)


@pytest.mark.parametrize(
    ("pattern", "device_id", "allowed"),
    [
        pytest.param("ACME-*", "ACME-0001", True, id="ok-prefix"),
        pytest.param("ACME-*", "acme-0001", False, id="fail-case-sensitive"),
        pytest.param("ACME-*", "OTHER-ACME-1", False, id="fail-prefix-anchored"),
        pytest.param("ACME-??", "ACME-01", True, id="ok-question-marks"),
        pytest.param("ACME-??", "ACME-001", False, id="fail-one-char-each"),
    ],
)
def test_device_id_examples(pattern: str, device_id: str, allowed: bool) -> None:
    assert device_id_allowed([pattern], device_id) is allowed


@pytest.mark.parametrize("pattern", ["ACME [x]", "", "a" * 65, "ACME-[0-9]"])
def test_fail_bad_device_id_pattern(pattern: str) -> None:
    with pytest.raises(ConfigurationError, match="device-id pattern"):
        check_device_id_pattern(pattern)


# ------------------------------------------------------------------ DNS names


@given(label=labels, domain=domains)
def test_ok_wildcard_matches_exactly_one_label(label: str, domain: str) -> None:
    pattern = f"*.{domain}"
    assert dns_name_allowed([pattern], f"{label}.{domain}")
    assert dns_name_allowed([pattern], f"{label}.{domain}".upper())  # DNS is case-blind
    assert not dns_name_allowed([pattern], domain)  # not the domain itself
    assert not dns_name_allowed([pattern], f"{label}.{label}.{domain}")  # not two labels


@given(name=domains, other=domains)
def test_fail_exact_name_matches_only_itself(name: str, other: str) -> None:
    assert dns_name_allowed([name], name)
    assert dns_name_allowed([name], other) == (other == name)


@given(label=labels, domain=domains, other=domains)
def test_fail_wildcard_never_reaches_another_domain(label: str, domain: str, other: str) -> None:
    if other == domain:
        return
    assert not dns_name_allowed([f"*.{domain}"], f"{label}.{other}")


@pytest.mark.parametrize(
    "pattern", ["*", "*.com", "a.*.example.com", "*x.example.com", "under_score.example"]
)
def test_fail_bad_dns_pattern(pattern: str) -> None:
    with pytest.raises(ConfigurationError, match="DNS pattern"):
        check_dns_pattern(pattern)


def test_ok_dns_pattern_is_lower_cased() -> None:
    assert check_dns_pattern("*.Node.Example.COM") == "*.node.example.com"


# ------------------------------------------------------------------ IP ranges


@given(network=st.ip_addresses(v=4).map(lambda a: ipaddress.ip_network(f"{a}/24", strict=False)))
def test_ok_ipv4_range_holds_its_addresses_only(network: ipaddress.IPv4Network) -> None:
    ranges = [str(network)]
    assert ip_allowed(ranges, str(network.network_address + 7))
    assert ip_allowed(ranges, str(network.broadcast_address))
    outside = network.broadcast_address + 1 if network.broadcast_address.packed[0] < 255 else None
    if outside is not None:
        assert not ip_allowed(ranges, str(outside))


@given(address=st.ip_addresses())
def test_ok_bare_address_is_that_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    ranges = [check_ip_range(str(address))]
    assert ip_allowed(ranges, str(address))
    assert not ip_allowed([], str(address))


def test_fail_ip_of_the_other_family_never_matches() -> None:
    assert not ip_allowed(["0.0.0.0/0"], "::1")
    assert not ip_allowed(["::/0"], "127.0.0.1")


@pytest.mark.parametrize("text", ["10.0.0.1/8", "10.0.0.0/33", "example.com", ""])
def test_fail_bad_ip_range(text: str) -> None:
    with pytest.raises(ConfigurationError, match="IP range"):
        check_ip_range(text)


# ------------------------------------------------------------------ authorize


RIGHTS = build_entitlement(
    cas=["nodes"], device_ids=["node-x-*"], dns_names=["*.x.example"], ip_ranges=["10.1.0.0/24"]
)


def test_ok_inside_the_entitlement() -> None:
    authorize(
        "cx",
        RIGHTS,
        ca_name="nodes",
        device_id="node-x-1",
        dns_names=("a.x.example",),
        ip_addresses=("10.1.0.9",),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"ca_name": "factory"}, "may not use CA 'factory'", id="fail-other-ca"),
        pytest.param({"device_id": "node-y-1"}, "may not name device id 'node-y-1'", id="fail-id"),
        pytest.param(
            {"dns_names": ("a.y.example",)}, "may not ask for DNS name 'a.y.example'", id="fail-dns"
        ),
        pytest.param(
            {"ip_addresses": ("10.2.0.1",)}, "may not ask for IP address '10.2.0.1'", id="fail-ip"
        ),
    ],
)
def test_fail_outside_the_entitlement_names_only_what_was_refused(
    kwargs: dict[str, object], message: str
) -> None:
    request: dict[str, object] = {"ca_name": "nodes", "device_id": "node-x-1", **kwargs}
    with pytest.raises(NotEntitled) as caught:
        authorize("cx", RIGHTS, **request)  # type: ignore[arg-type]
    assert isinstance(caught.value, NotAuthorized)
    assert caught.value.message == f"CA-client cx {message}"
    # Never what else the client may ask for: nothing of its entitlement is echoed.
    assert "x.example" not in caught.value.message.replace("a.x.example", "")
    assert "10.1.0.0" not in caught.value.message


def test_fail_no_ca_unless_named() -> None:
    with pytest.raises(NotEntitled, match="may not use CA 'factory'"):
        authorize("c", build_entitlement(), ca_name="factory", device_id="d")


# ------------------------------------------------------------------ building and changing


def test_ok_build_defaults_and_deduplicates() -> None:
    built = build_entitlement(cas=["a", "a", "b"], ip_ranges=["192.0.2.10"])
    assert built == ClientEntitlement(
        cas=("a", "b"), device_ids=("*",), ip_ranges=("192.0.2.10/32",)
    )


def test_ok_change_replace_add_remove() -> None:
    current = ClientEntitlement(cas=("a", "b"), device_ids=("X-*",))
    change = ClientEntitlement(cas=("b", "c"))
    cas = frozenset({"cas"})
    assert change_entitlement(current, change, given=cas, mode=ChangeMode.REPLACE).cas == ("b", "c")
    assert change_entitlement(current, change, given=cas, mode=ChangeMode.ADD).cas == (
        "a",
        "b",
        "c",
    )
    removed = change_entitlement(current, change, given=cas, mode=ChangeMode.REMOVE)
    assert removed.cas == ("a",)
    assert removed.device_ids == ("X-*",)  # a list not given stays
    legacy = change_entitlement(None, change, given=cas, mode=ChangeMode.REPLACE)
    assert legacy == ClientEntitlement(cas=("b", "c"), device_ids=("*",))
