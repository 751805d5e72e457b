"""Device-id namespaces: pattern syntax, matching, and the overlap search with its witness."""

from __future__ import annotations

import fnmatch
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztpki.errors import ConfigurationError
from ztpki.pki.device_ids import EVERY_DEVICE_ID, DeviceIdNamespace, DeviceIdPattern
from ztpki.pki.names import DEVICE_ID_PATTERN

# A small alphabet, so that random patterns and ids meet often.
_CHARS = "AB-"
patterns = st.text(alphabet=_CHARS + "*", min_size=1, max_size=6)
ids = st.text(alphabet=_CHARS, min_size=1, max_size=8)


def reference_match(pattern: str, device_id: str) -> bool:
    # fnmatch is the reference for '*' (no [ or ? appear in these patterns), case-sensitive.
    return fnmatch.fnmatchcase(device_id, pattern)


@pytest.mark.parametrize(
    ("pattern", "device_id", "expected"),
    [
        ("ACME-*", "ACME-B1-000001", True),
        ("ACME-*", "ACME-", True),
        ("ACME-*", "acme-1", False),  # case-sensitive
        ("ACME-*", "XACME-1", False),  # anchored at the start
        ("*-B1-*", "ACME-B1-7", True),
        ("ACME-B1-000042", "ACME-B1-000042", True),
        ("ACME-B1-000042", "ACME-B1-0000420", False),  # anchored at the end
        ("A.B", "AxB", False),  # '.' is literal, not a regex wildcard
        ("*", "anything_at-all.1", True),
    ],
    ids=lambda v: str(v),
)
def test_pattern_matching(pattern: str, device_id: str, expected: bool) -> None:
    assert DeviceIdPattern(pattern).matches(device_id) is expected


@pytest.mark.parametrize(
    "text", ["", "ACME *", "ACME-?", "ACME-[0-9]", "x" * 65, "ACME/1", "ä*"], ids=repr
)
def test_fail_bad_patterns(text: str) -> None:
    with pytest.raises(ConfigurationError, match="device-id pattern"):
        DeviceIdPattern(text)


def test_namespace_union_and_text() -> None:
    space = DeviceIdNamespace.parse(["ACME-*", "OLD-1", "ACME-*"])
    assert space.texts() == ["ACME-*", "OLD-1"] and str(space) == "ACME-*, OLD-1"
    assert space.covers("ACME-9") and space.covers("OLD-1") and not space.covers("OLD-2")
    assert EVERY_DEVICE_ID.covers("ANY-thing")
    with pytest.raises(ConfigurationError, match="at least one pattern"):
        DeviceIdNamespace.parse([])


@pytest.mark.parametrize(
    ("first", "second", "overlaps"),
    [
        (["ACME-*"], ["GLX-*"], False),
        (["ACME-*"], ["*-B1-*"], True),
        (["ACME-*"], ["ACME-B1-7"], True),
        (["ACME-A*"], ["ACME-B*"], False),
        (["*"], ["*"], True),
        (["A*B"], ["B*A"], False),
        (["GLX-*", "OLD-*"], ["OLD-7"], True),
    ],
)
def test_overlap_examples(first: list[str], second: list[str], overlaps: bool) -> None:
    a, b = DeviceIdNamespace.parse(first), DeviceIdNamespace.parse(second)
    found = a.overlap(b)
    assert (found is not None) is overlaps
    if found is not None:
        assert a.covers(found) and b.covers(found) and DEVICE_ID_PATTERN.fullmatch(found)
        assert b.overlap(a) is not None


@given(pattern=patterns, device_id=ids)
@settings(max_examples=400, deadline=None)
def test_property_matching_agrees_with_fnmatch(pattern: str, device_id: str) -> None:
    assert DeviceIdPattern(pattern).matches(device_id) == reference_match(pattern, device_id)


def _brute_force_overlap(p: str, q: str) -> bool:
    # Every word up to the length that can matter: the literal characters of both patterns
    # plus one (a shortest common word never needs more).
    limit = len(p.replace("*", "")) + len(q.replace("*", "")) + 1
    for length in range(1, limit + 1):
        for letters in itertools.product(_CHARS, repeat=length):
            word = "".join(letters)
            if reference_match(p, word) and reference_match(q, word):
                return True
    return False


@given(p=patterns, q=patterns)
@settings(max_examples=300, deadline=None)
def test_property_overlap_is_sound_and_complete(p: str, q: str) -> None:
    found = DeviceIdPattern(p).overlap(DeviceIdPattern(q))
    if found is not None:  # sound: the witness is in both
        assert reference_match(p, found) and reference_match(q, found), found
    assert (found is not None) == _brute_force_overlap(p, q)  # complete
