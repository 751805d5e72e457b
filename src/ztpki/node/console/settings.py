"""The ``[console]`` table of node.toml: who may log in to the web console, and for how long.

``operator_ca``: a PEM file of the CA certificate(s) whose client certificates log operators
in (the certificate's common name must name an operator added with `ztpki node
add-operator`, whose role applies). Without it only password logins exist.

``ca_http``: the base URLs of the CA systems' HTTP listeners (``ca serve --http-listen``):
the CA health page shows the certificates they count and their CRLs' freshness.

``session_minutes``: a session ends this long after the login; ``idle_minutes``: or this long
after its last request, whichever comes first. Sessions are kept in the register: they
survive a restart of the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ztpki.errors import ConfigurationError


@dataclass(frozen=True)
class ConsoleConfig:
    operator_ca: Path | None = None
    session_minutes: float = 30.0
    # A session without a request for this long ends (at most session_minutes).
    idle_minutes: float = 15.0
    # Failed logins one name may make in login_window_seconds (one address: four times as many).
    login_attempts: int = 5
    login_window_seconds: float = 300.0
    # The CA systems' HTTP listeners (`ca serve --http-listen`, or a mirror of their CRLs):
    # base URLs whose /metrics and /crl/NAME.crl the CA health page reads.
    ca_http: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for url in self.ca_http:
            parts = urlsplit(url)
            if parts.username or parts.password:
                raise ConfigurationError(
                    "[console] ca_http: put no credentials in the URL (the health page shows it)"
                )
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
                raise ConfigurationError(
                    f"[console] ca_http: {url[:100]!r} is not a base URL such as "
                    "http://ca.example:8080 (a CA system's --http-listen)"
                )
        if not 1 <= self.session_minutes <= 24 * 60:
            raise ConfigurationError("[console] session_minutes must be 1..1440")
        if not 1 <= self.idle_minutes <= 24 * 60:
            raise ConfigurationError("[console] idle_minutes must be 1..1440")
        if not 1 <= self.login_attempts <= 1000:
            raise ConfigurationError("[console] login_attempts must be 1..1000")
        if not 1 <= self.login_window_seconds <= 86400:
            raise ConfigurationError("[console] login_window_seconds must be 1..86400")

    def to_toml(self) -> dict[str, Any]:
        table: dict[str, Any] = {
            "session_minutes": self.session_minutes,
            "idle_minutes": self.idle_minutes,
            "login_attempts": self.login_attempts,
            "login_window_seconds": self.login_window_seconds,
        }
        if self.operator_ca is not None:
            table["operator_ca"] = str(self.operator_ca)
        if self.ca_http:
            table["ca_http"] = list(self.ca_http)
        return table

    @classmethod
    def from_toml(cls, table: dict[str, Any]) -> ConsoleConfig:
        ca = table.get("operator_ca")
        http = table.get("ca_http", [])
        if isinstance(http, str):
            http = [http]
        if not isinstance(http, list) or not all(isinstance(u, str) for u in http):
            raise ConfigurationError('[console] ca_http must be a list of URLs ("http://...")')
        return cls(
            operator_ca=None if ca is None else Path(str(ca)),
            session_minutes=float(table.get("session_minutes", 30.0)),
            idle_minutes=float(table.get("idle_minutes", 15.0)),
            login_attempts=int(table.get("login_attempts", 5)),
            login_window_seconds=float(table.get("login_window_seconds", 300.0)),
            ca_http=tuple(http),
        )
