"""The one text form of an instant in storage and in audit hashing.

UTC, microsecond precision, fixed width (``2024-05-01T12:00:00.000000Z``): equal instants have
equal text, and text order is time order, so SQL can compare the stored values directly in
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime

_WIDTH = len("2024-05-01T12:00:00.000000Z")


def require_utc(value: datetime, *, name: str = "time") -> datetime:
    """``value`` converted to UTC; ValueError for a naive datetime (its zone is unknowable)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def encode_instant(value: datetime, *, name: str = "time") -> str:
    return require_utc(value, name=name).replace(tzinfo=None).isoformat("T", "microseconds") + "Z"


def decode_instant(text: str) -> datetime:
    if len(text) != _WIDTH or not text.endswith("Z"):
        raise ValueError(f"stored instant {text!r} is not in the fixed UTC form")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
