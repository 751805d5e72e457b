"""Device-id namespaces: which device ids a party may name, as patterns like ``ACME-*``.

A pattern is a device id in which ``*`` stands for any run (possibly empty) of device-id
characters; every other character stands for itself, case-sensitively. A namespace is one or
more patterns; an id belongs to it when some pattern matches the whole id. Two namespaces
overlap when one id could belong to both; ``overlap`` finds such an id, so that an operator
sees why two manufacturers' namespaces clash.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ztpki.errors import ConfigurationError

_PATTERN = re.compile(r"[A-Za-z0-9._*-]{1,64}")
_ID_CHARS = "[A-Za-z0-9._-]"
_ANY = "*"


@dataclass(frozen=True)
class DeviceIdPattern:
    """One pattern, e.g. ``ACME-*`` or ``ACME-B1-000042`` or ``*`` (every id)."""

    text: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not _PATTERN.fullmatch(self.text):
            raise ConfigurationError(
                f"device-id pattern {str(self.text)[:64]!r} must be 1-64 characters of "
                "A-Z a-z 0-9 . _ - and * (any run of those), e.g. 'ACME-*'"
            )
        parts = (re.escape(part) for part in self.text.split(_ANY))
        object.__setattr__(self, "_regex", re.compile(f"{_ID_CHARS}*".join(parts)))

    def __str__(self) -> str:
        return self.text

    def matches(self, device_id: str) -> bool:
        return self._regex.fullmatch(device_id) is not None

    def overlap(self, other: DeviceIdPattern) -> str | None:
        """A device id both patterns match, or None when no id does."""
        return _common_word(self.text, other.text)


@dataclass(frozen=True)
class DeviceIdNamespace:
    """The device ids a manufacturer may list: the union of its patterns."""

    patterns: tuple[DeviceIdPattern, ...]

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ConfigurationError("a device-id namespace needs at least one pattern")

    @classmethod
    def parse(cls, texts: Iterable[str]) -> DeviceIdNamespace:
        patterns: list[DeviceIdPattern] = []
        for text in texts:
            pattern = DeviceIdPattern(text)
            if pattern not in patterns:
                patterns.append(pattern)
        return cls(tuple(patterns))

    def __str__(self) -> str:
        return ", ".join(p.text for p in self.patterns)

    def texts(self) -> list[str]:
        return [p.text for p in self.patterns]

    def covers(self, device_id: str) -> bool:
        return any(pattern.matches(device_id) for pattern in self.patterns)

    def overlap(self, other: DeviceIdNamespace) -> str | None:
        """A device id both namespaces hold, or None when they are disjoint."""
        for mine in self.patterns:
            for theirs in other.patterns:
                found = mine.overlap(theirs)
                if found is not None:
                    return found
        return None


def _common_word(p: str, q: str) -> str | None:
    """The shortest word both glob patterns match (``*`` only), by a search over the product
    of their automata: state (i, j) means p[:i] and q[:j] are spent."""
    start, goal = (0, 0), (len(p), len(q))
    came_from: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if state == goal:
            break
        for following, emitted in _moves(p, q, *state):
            if following not in came_from:
                came_from[following] = (state, emitted)
                queue.append(following)
    if goal not in came_from:
        return None
    word: list[str] = []
    step = came_from[goal]
    while step is not None:
        previous, emitted = step
        word.append(emitted)
        step = came_from[previous]
    # Only two all-star patterns share the empty word; a device id needs one character.
    return "".join(reversed(word)) or "0"


def _moves(p: str, q: str, i: int, j: int) -> list[tuple[tuple[int, int], str]]:
    moves: list[tuple[tuple[int, int], str]] = []
    p_star = i < len(p) and p[i] == _ANY
    q_star = j < len(q) and q[j] == _ANY
    if p_star:
        moves.append(((i + 1, j), ""))  # the star matches nothing more
    if q_star:
        moves.append(((i, j + 1), ""))
    p_char = i < len(p) and not p_star
    q_char = j < len(q) and not q_star
    if p_char and q_char and p[i] == q[j]:
        moves.append(((i + 1, j + 1), p[i]))
    if p_star and q_char:
        moves.append(((i, j + 1), q[j]))  # p's star takes q's character
    if q_star and p_char:
        moves.append(((i + 1, j), p[i]))
    return moves


# The factory's own check of what it signs: a manufacturer may name any id in its manifests;
# each customer decides which of them it accepts from that manufacturer.
EVERY_DEVICE_ID = DeviceIdNamespace((DeviceIdPattern(_ANY),))
