"""Operators' passwords (argon2id, argon2-cffi's defaults) and names.

The register keeps only the hash. A certificate-only operator (one who logs in with a client
certificate of the operator CA) has the hash ``!``, which no password matches.
"""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ztpki.errors import ConfigurationError

CERTIFICATE_ONLY = "!"
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_hasher = PasswordHasher()


def check_operator_name(name: str) -> str:
    """The name, or ConfigurationError: letters, digits, '.', '_', '@', '-'; 1..64."""
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            "an operator name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with "
            "a letter or digit"
        )
    return name


def hash_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ConfigurationError(
            f"an operator password has {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )
    return _hasher.hash(password)


# A hash to verify against when the name is unknown: the answer takes as long as for a known
# name, so timing does not tell which names exist.
_DECOY = _hasher.hash("not a password of anyone: decoy")


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored`` (None: an unknown operator, always False)."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        if stored is None or stored == CERTIFICATE_ONLY:
            _hasher.verify(_DECOY, password)
            return False
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
