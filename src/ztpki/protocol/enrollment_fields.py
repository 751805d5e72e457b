"""The XML enrollment protocol's field checks: Python mirrors of the schema's simple types,
so that a bad value is refused where a message's dataclass is built (with the message a
decoder would give), not deep inside lxml."""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from ztpki.protocol.enrollment_schema import InvalidEnrollmentMessage, invalid_value

MAX_DER_SIZE: Final = 65536

NOT_XML_TEXT = "\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff"
IDENTIFIER = re.compile(r"[A-Za-z0-9._\-]{1,64}")
TEXT = re.compile(f"[^{NOT_XML_TEXT}]{{1,64}}")
PASSPHRASE = re.compile(f"[^{NOT_XML_TEXT}]{{8,256}}")
COUNTRY = re.compile(r"[A-Z]{2}")
ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+"
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
HOST = rf"{LABEL}(?:\.{LABEL})*"
EMAIL = re.compile(rf"{ATOM}(?:\.{ATOM})*@{HOST}")
DNS_NAME = re.compile(HOST)
IP_TEXT = re.compile(r"[0-9A-Fa-f:.]{2,45}")
CONTROL_RUN = re.compile(f"[{NOT_XML_TEXT}]+")


def typed(name: str, value: object, kind: type) -> None:
    # bool is an int, but True days or a request with reissue=1 is a caller's mistake.
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return
    raise TypeError(f"{name} must be {kind.__name__}, not {type(value).__name__}")


def check(ok: bool, name: str, value: object) -> None:
    if not ok:
        raise invalid_value(name, value)


def check_pattern(name: str, value: object, pattern: re.Pattern[str], limit: int) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    check(len(value) <= limit and pattern.fullmatch(value) is not None, name, value)


def check_identifier(name: str, value: object) -> None:
    check_pattern(name, value, IDENTIFIER, 64)


def check_optional(name: str, value: object, pattern: re.Pattern[str], limit: int) -> None:
    if value is not None:
        check_pattern(name, value, pattern, limit)


def check_der(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    check(0 < len(value) <= MAX_DER_SIZE, name, value)


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def sequence(owner: object, attribute: str, name: str, limit: int) -> tuple[object, ...]:
    """The tuple in ``attribute`` (a list is accepted and stored as a tuple), at most ``limit``."""
    values = getattr(owner, attribute)
    if not isinstance(values, tuple | list):
        raise TypeError(f"{attribute} must be a tuple, not {type(values).__name__}")
    values = tuple(values)
    if len(values) > limit:
        raise InvalidEnrollmentMessage(f"at most {limit} {name} elements are allowed")
    object.__setattr__(owner, attribute, values)
    return values
