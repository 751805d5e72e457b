"""The versions a user reports with a problem or checks before an upgrade.

ztpki's own version is read from the installed package's metadata (written once, in
pyproject.toml). cryptography carries its own OpenSSL for keys and certificates while TLS runs
on the one Python's ssl module was built with, so both are named. A CA-system or node
directory adds the XML enrollment protocol it speaks and the schema of its database.
"""

from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "ztpki"
# A source tree imported without being installed has no metadata to read.
UNINSTALLED = "0+unknown"


def ztpki_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNINSTALLED


def version_report() -> str:
    """`ztpki --version`: one line per component."""
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    python = ".".join(str(part) for part in sys.version_info[:3])
    return "\n".join(
        (
            f"ztpki {ztpki_version()}",
            f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})",
            f"TLS: Python {python} ssl ({ssl.OPENSSL_VERSION})",
        )
    )


@dataclass(frozen=True)
class DeploymentVersions:
    """What a directory's service speaks and keeps."""

    protocol: int  # the XML enrollment protocol between CA-clients and CA systems
    component: str  # whose tables: "ca_system" or "customer_node"
    schema: int  # the database schema this ztpki uses
    database: str  # a path, or a URL without its password
    database_schema: int | None  # the schema the database holds; None before it exists

    def to_json(self) -> dict[str, int | None]:
        return {
            "protocol": self.protocol,
            "schema": self.schema,
            "database_schema": self.database_schema,
        }

    def describe(self) -> str:
        """One line for `ztpki ca list` and `ztpki node policy`."""
        from ztpki.store.sql import MIGRATE_COMMANDS

        protocol = f"versions: XML enrollment protocol {self.protocol}"
        schema = f"{self.component} database schema"
        if self.database_schema is None:
            return f"{protocol}; {schema} {self.schema} (no database yet)"
        if self.database_schema < self.schema:
            return (
                f"{protocol}; {self.database} holds {schema} {self.database_schema}, older than "
                f"this ztpki's {self.schema}: back it up and run "
                f"`{MIGRATE_COMMANDS.get(self.component, 'migrate')} --dir DIR`"
            )
        if self.database_schema != self.schema:
            return (
                f"{protocol}; {self.database} holds {schema} {self.database_schema}, but this "
                f"ztpki uses {self.schema}: use the matching ztpki release"
            )
        return f"{protocol}; {schema} {self.schema} ({self.database})"


def deployment_versions(database: Path | str, *, component: str, schema: int) -> DeploymentVersions:
    """Read ``database`` (a SQLite file or a PostgreSQL URL) without writing to it (it may not
    exist yet)."""
    from ztpki.protocol.enrollment_schema import PROTOCOL_VERSION
    from ztpki.store.sqlite import describe_location, stored_schema

    return DeploymentVersions(
        protocol=PROTOCOL_VERSION,
        component=component,
        schema=schema,
        database=describe_location(database),
        database_schema=stored_schema(database, component),
    )
