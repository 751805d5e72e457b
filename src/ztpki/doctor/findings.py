"""What the doctor found: one finding per check and thing checked, and the verdict."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Severity(enum.IntEnum):
    OK = 0
    WARNING = 1
    ERROR = 2

    @property
    def word(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Finding:
    """``subject`` is what was checked (a file, a certificate, an address); ``fix`` says what
    repairs it, for anything that is not OK."""

    severity: Severity
    check: str
    subject: str
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "severity": self.severity.word,
            "check": self.check,
            "subject": self.subject,
            "message": self.message,
            "fix": self.fix,
        }


def ok(check: str, subject: str, message: str) -> Finding:
    return Finding(Severity.OK, check, subject, message)


def warning(check: str, subject: str, message: str, fix: str) -> Finding:
    return Finding(Severity.WARNING, check, subject, message, fix)


def error(check: str, subject: str, message: str, fix: str) -> Finding:
    return Finding(Severity.ERROR, check, subject, message, fix)


def worst(findings: Iterable[Finding]) -> Severity:
    return max((f.severity for f in findings), default=Severity.OK)
