"""What the node and CA-system commands share about their store: `--database URL` at init,
and `migrate`, the one command that upgrades a schema."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from ztpki.store.database_url import DATABASE_URL_ENV, redact_url
from ztpki.store.sqlite import StoreLocation, describe_location, stored_schema

F = TypeVar("F", bound=Callable[..., object])


def database_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--database",
        envvar=DATABASE_URL_ENV,
        metavar="URL",
        help=(
            f"PostgreSQL database for the {what} (postgresql://USER@HOST:PORT/DB; a password "
            f"from ~/.pgpass or PGPASSFILE, or in the URL) (default: ${DATABASE_URL_ENV}, "
            "else a SQLite file in the directory). The URL is kept in DIR/database.url, mode "
            "0600."
        ),
        callback=_check_url,
    )


def _check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    del ctx, param
    if value is None or not value.strip():
        return None
    from ztpki.store.database_url import check_database_url

    return check_database_url(value.strip())


def migrate_store(
    location: StoreLocation, component: str, target: int, open_migrating: Callable[[], object]
) -> str:
    """Bring the store at ``location`` to schema ``target``; the line to print."""
    name = describe_location(location)
    found = stored_schema(location, component)
    store = open_migrating()
    close = getattr(store, "close", None)
    if close is not None:
        close()
    if found is None:
        return f"created {component} schema version {target} in {name}"
    if found == target:
        return f"{name} holds {component} schema version {target} already; nothing to do"
    return f"migrated {name} from {component} schema version {found} to {target}"


__all__ = ["database_option", "migrate_store", "redact_url"]
