"""DNS-SD codec: the TXT record both ways, records refused when built, RFC 2782 order."""

from __future__ import annotations

import itertools

import pytest

from ztpki.errors import MalformedInput
from ztpki.protocol.dnssd import (
    SERVICE_TYPES,
    ServiceRecord,
    decode_txt,
    encode_txt,
    order_records,
    service_name,
)

FP = "ab" * 32


def record(name: str, priority: int = 0, weight: int = 0, hint: str | None = None) -> ServiceRecord:
    return ServiceRecord(name, f"{name}.example", 8443, priority, weight, ca_hint=hint)


def test_ok_txt_round_trip_with_label_and_hint() -> None:
    pairs = encode_txt(label="fleet", ca_fingerprint=f"sha256:{FP.upper()}")
    assert pairs == {"txtvers": "1", "path": "/.well-known/est/fleet", "ca": f"sha256:{FP}"}
    wire = {k.encode(): v.encode() for k, v in pairs.items()}
    assert decode_txt(wire) == ("fleet", FP)


def test_ok_txt_without_path_or_hint_is_the_default_path() -> None:
    assert encode_txt(label=None, ca_fingerprint=None) == {
        "txtvers": "1",
        "path": "/.well-known/est",
    }
    assert decode_txt({}) == (None, None)


def test_ok_unreadable_hint_is_dropped_not_fatal() -> None:
    assert decode_txt({b"ca": b"sha256:nothex", b"PATH": b"/.well-known/est/"}) == (None, None)


@pytest.mark.parametrize(
    ("pairs", "said"),
    [
        pytest.param({b"path": b"/admin"}, "not under", id="fail-path-elsewhere"),
        pytest.param({b"path": b"/.well-known/est/a/b"}, "one CA label", id="fail-two-labels"),
        pytest.param({b"path": b"/.well-known/est/../x"}, "one CA label", id="fail-dot-dot"),
        pytest.param({b"txtvers": b"2"}, "txtvers", id="fail-later-version"),
    ],
)
def test_fail_txt_refused(pairs: dict[bytes, bytes], said: str) -> None:
    with pytest.raises(MalformedInput, match=said):
        decode_txt(pairs)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"target": "bad host!", "port": 1}, id="fail-target"),
        pytest.param({"target": "ok.example", "port": 0}, id="fail-port"),
        pytest.param({"target": "ok.example", "port": 1, "priority": 70000}, id="fail-priority"),
    ],
)
def test_fail_record_refused_when_built(kwargs: dict[str, object]) -> None:
    with pytest.raises(MalformedInput):
        ServiceRecord("x", **kwargs)  # type: ignore[arg-type]


def test_ok_cmp_paths_by_the_table() -> None:
    assert encode_txt(label="fleet", ca_fingerprint=None, kind="cmp")["path"] == (
        "/.well-known/cmp/p/fleet"
    )
    assert decode_txt({b"path": b"/.well-known/cmp/p/fleet"}, kind="cmp") == ("fleet", None)
    assert decode_txt({b"path": b"/.well-known/cmp"}, kind="cmp") == (None, None)
    with pytest.raises(MalformedInput, match=r"not under /\.well-known/cmp"):
        decode_txt({b"path": b"/.well-known/est"}, kind="cmp")
    assert service_name("cmp", "site.example") == "_ztpki-cmp._tcp.site.example."


def test_ok_service_name_from_the_table() -> None:
    assert service_name("est", "site.example.") == "_ztpki-est._tcp.site.example."
    assert SERVICE_TYPES["est"] == "_ztpki-est._tcp"
    with pytest.raises(ValueError, match="unknown service kind"):
        service_name("scep", "site.example")


def test_ok_lower_priority_first_and_a_zero_weight_only_on_a_zero_draw() -> None:
    """RFC 2782: zero weights sit first in the running sum, so only a draw of 0 picks one."""
    records = [record("c", 10), record("a", 0, 5), record("b", 0, 0)]
    assert [r.instance for r in order_records(records, random=lambda: 0.0)] == ["b", "a", "c"]
    assert [r.instance for r in order_records(records, random=lambda: 0.99)] == ["a", "b", "c"]


def test_ok_weights_share_first_place_in_proportion() -> None:
    """RFC 2782: with weights 1 and 3, the heavier one is first for 3 draws in 4."""
    draws = itertools.cycle([i / 100 for i in range(100)])
    firsts = [
        order_records([record("light", 0, 1), record("heavy", 0, 3)], random=lambda: next(draws))[
            0
        ].instance
        for _ in range(100)
    ]
    assert 60 <= firsts.count("heavy") <= 90
    assert firsts.count("light") >= 10


def test_ok_trusted_hint_goes_first_among_equals_only() -> None:
    records = [record("plain", 0), record("hinted", 0, hint=FP), record("better", 0)]
    records.append(record("worse-hinted", 5, hint=FP))
    ordered = order_records(records, random=lambda: 0.0, trusted_hints=[FP])
    assert [r.instance for r in ordered] == ["hinted", "plain", "better", "worse-hinted"]
