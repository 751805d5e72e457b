"""Whether a store's schema is the one this ztpki uses (read only: nothing is created)."""

from __future__ import annotations

from ztpki.doctor.findings import Finding, error, ok, warning
from ztpki.errors import ZtpkiError
from ztpki.store.sqlite import StoreLocation, describe_location, stored_schema


def schema_state(
    location: StoreLocation, component: str, version: int, *, migrate: str, create: str
) -> Finding:
    """``migrate``: the command that migrates it; ``create``: the one that creates it."""
    subject = f"store {describe_location(location)}"
    try:
        found = stored_schema(location, component)
    except ZtpkiError as exc:
        return error("schema", subject, f"cannot be read: {exc.message}", "check the database")
    if found is None:
        return warning("schema", subject, f"holds no {component} schema yet", create)
    if found < version:
        return error(
            "schema",
            subject,
            f"holds {component} schema version {found}; this ztpki uses {version} and its "
            "services refuse to start on it",
            f"stop every service using it, back it up, then run `{migrate}`",
        )
    if found > version:
        return error(
            "schema",
            subject,
            f"holds {component} schema version {found}, written by a newer ztpki (this one "
            f"uses {version})",
            "run the ztpki release that wrote it, or a newer one",
        )
    return ok("schema", subject, f"{component} schema version {found}, current")
