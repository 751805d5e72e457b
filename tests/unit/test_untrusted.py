"""ztpki.untrusted: text a stranger chose, quoted for messages and made displayable."""

from __future__ import annotations

import ast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztpki.untrusted import QUOTE_LIMIT, displayable, quote

PRINTABLE_ASCII = {chr(c) for c in range(0x20, 0x7F)}
limits = st.integers(min_value=32, max_value=400)


@given(st.text(max_size=2000), limits)
def test_ok_quote_is_printable_ascii_and_bounded(text: str, limit: int) -> None:
    quoted = quote(text, limit=limit)
    assert set(quoted) <= PRINTABLE_ASCII
    assert len(quoted) <= limit


@given(st.text(max_size=200))
def test_ok_quote_reads_back_exactly_when_it_fits(text: str) -> None:
    # A Python string literal: the text comes back exactly, so distinct texts that fit
    # the limit can never be told apart only by their quoted form.
    quoted = quote(text, limit=1000)
    assert ast.literal_eval(quoted) == text


@given(st.text(max_size=40), st.text(max_size=40))
def test_ok_distinct_short_texts_stay_distinct(a: str, b: str) -> None:
    if a != b:
        assert quote(a) != quote(b)


@given(st.text(min_size=1, max_size=3000))
def test_ok_a_cut_text_says_so_and_keeps_a_readable_prefix(text: str) -> None:
    quoted = quote(text, limit=64)
    if quoted.endswith(f"... ({len(text)} characters)"):
        prefix = ast.literal_eval(quoted[: quoted.rindex("... (")])
        assert text.startswith(prefix) and len(prefix) < len(text)
    else:
        assert ast.literal_eval(quoted) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("ACME-1", "'ACME-1'", id="ok-plain"),
        pytest.param(
            "X\n2026-12-07 INFO ztpki.node: issued serial=01 device=ACME-1",
            "'X\\n2026-12-07 INFO ztpki.node: issued serial=01 device=ACME-1'",
            id="ok-forged-log-line-stays-on-one-line",
        ),
        pytest.param("\x1b]0;pwned\x07", "'\\x1b]0;pwned\\x07'", id="ok-osc-title"),
        pytest.param("\x9b31m", "'\\x9b31m'", id="ok-c1-csi"),
        pytest.param("a\u2028b\u202ec", "'a\\u2028b\\u202ec'", id="ok-separator-and-bidi"),
        pytest.param("it's \\n", "'it\\'s \\\\n'", id="ok-quote-and-backslash"),
        pytest.param("[/bold]", "'[/bold]'", id="ok-markup-is-plain-text"),
    ],
)
def test_ok_quote_examples(text: str, expected: str) -> None:
    assert quote(text) == expected


def test_ok_quote_cuts_with_a_marker() -> None:
    quoted = quote("A" * 1000)
    assert len(quoted) == QUOTE_LIMIT
    assert quoted.endswith("'... (1000 characters)")


def test_ok_quote_never_splits_an_escape() -> None:
    quoted = quote("\x1b" * 100, limit=40)
    body = quoted[1 : quoted.rindex("'")]
    assert len(body) % 4 == 0 and set(body.split("\\x1b")) == {""}


def test_fail_quote_limit_too_small() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        quote("x", limit=10)


@given(st.text(max_size=500))
def test_ok_displayable_holds_only_printable_characters(text: str) -> None:
    shown = displayable(text)
    assert all(c.isprintable() or c == " " for c in shown)


@given(st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))))
def test_ok_displayable_keeps_printable_text_of_any_script(text: str) -> None:
    if all(c.isprintable() or c == " " for c in text):
        assert displayable(text) == text


def test_ok_displayable_examples() -> None:
    assert displayable("Société [/bold]") == "Société [/bold]"
    assert displayable("a\x1b]0;pwned\x07\nb\u202e") == "a\\x1b]0;pwned\\x07\\nb\\u202e"
    assert displayable(None) == "None"
