"""Text a stranger chose, made safe where it enters a message or reaches a terminal.

A certificate subject, a CSR field, a request path or a manifest field can hold newlines
(a forged second log line), escape sequences (which a terminal obeys), Unicode line
separators and bidirectional overrides. Two forms:

* ``quote`` for log lines, error messages sent back to a client, and audit rows: a
  single-quoted literal of printable ASCII, every other character escaped visibly (``\\n``,
  ``\\x1b``, ``\\u2028``), cut to a length with a visible marker. It reads back as a Python
  string literal, so two different texts that fit give two different literals.
* ``displayable`` for what a command prints: printable characters of any script kept,
  control, format and separator characters escaped visibly, so a terminal shows them
  instead of obeying them.

Pure functions, no I/O: the protocol codecs use them too.
"""

from __future__ import annotations

__all__ = ["QUOTE_LIMIT", "displayable", "quote"]

# Long enough for any device id, subject attribute or header value a person needs to read.
QUOTE_LIMIT = 120
_MIN_LIMIT = 32  # room for the quotes, a few characters and the marker
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "'": "\\'", "\\": "\\\\"}


def _escaped(char: str) -> str:
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    if 0x20 <= code < 0x7F:
        return char
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _marker(total: int) -> str:
    return f"... ({total} characters)"


def quote(text: object, *, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as a single-quoted literal of printable ASCII, at most ``limit`` characters.

    A text whose literal is longer is cut at a whole character and followed by a marker
    giving the whole text's length: ``'abc'... (200 characters)``.
    """
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT}")
    value = text if isinstance(text, str) else str(text)
    if len(value) + 2 <= limit:
        whole = "".join(map(_escaped, value))
        if len(whole) + 2 <= limit:
            return f"'{whole}'"
    budget = limit - 2 - len(_marker(len(value)))
    pieces: list[str] = []
    used = 0
    for char in value:
        piece = _escaped(char)
        if used + len(piece) > budget:
            break
        pieces.append(piece)
        used += len(piece)
    return f"'{''.join(pieces)}'{_marker(len(value))}"


def displayable(text: object) -> str:
    """``text`` for a terminal: every character that is not printable escaped visibly.

    Printable means what ``str.isprintable`` says plus the plain space: letters, digits,
    marks and symbols of any script. Escaped: control characters (C0, DEL, C1 such as the
    single-byte CSI), format characters (bidirectional overrides, zero-width joiners), line
    and paragraph separators, surrogates, private-use and unassigned code points. A
    backslash stays as it is: the result is for reading, not for parsing back.
    """
    value = text if isinstance(text, str) else str(text)
    if value.isprintable():
        return value
    return "".join(char if char.isprintable() or char == " " else _escaped(char) for char in value)
