"""The ``[console]`` table of node.toml: who may log in to the web console, and for how long.

``operator_ca``: a PEM file of the CA certificate(s) whose client certificates log operators
in (the certificate's common name must name an operator added with `ztpki node
add-operator`, whose role applies). Without it only password logins exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztpki.errors import ConfigurationError


@dataclass(frozen=True)
class ConsoleConfig:
    operator_ca: Path | None = None
    session_minutes: float = 30.0
    # Failed logins one name may make in login_window_seconds (one address: four times as many).
    login_attempts: int = 5
    login_window_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not 1 <= self.session_minutes <= 24 * 60:
            raise ConfigurationError("[console] session_minutes must be 1..1440")
        if not 1 <= self.login_attempts <= 1000:
            raise ConfigurationError("[console] login_attempts must be 1..1000")
        if not 1 <= self.login_window_seconds <= 86400:
            raise ConfigurationError("[console] login_window_seconds must be 1..86400")

    def to_toml(self) -> dict[str, Any]:
        table: dict[str, Any] = {
            "session_minutes": self.session_minutes,
            "login_attempts": self.login_attempts,
            "login_window_seconds": self.login_window_seconds,
        }
        if self.operator_ca is not None:
            table["operator_ca"] = str(self.operator_ca)
        return table

    @classmethod
    def from_toml(cls, table: dict[str, Any]) -> ConsoleConfig:
        ca = table.get("operator_ca")
        return cls(
            operator_ca=None if ca is None else Path(str(ca)),
            session_minutes=float(table.get("session_minutes", 30.0)),
            login_attempts=int(table.get("login_attempts", 5)),
            login_window_seconds=float(table.get("login_window_seconds", 300.0)),
        )
