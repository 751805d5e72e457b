"""Where a store lives: a SQLite file (the default) or a PostgreSQL URL, and how to name it.

A URL may carry a password; every message, log line and listing shows it as ``***``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ztpki.errors import ConfigurationError

DATABASE_URL_ENV = "ZTPKI_DATABASE_URL"
_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(value: str) -> bool:
    return urlsplit(value).scheme in _SCHEMES


def check_database_url(url: str) -> str:
    """``url`` when it names a PostgreSQL database; ConfigurationError (without the password)
    otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"database URL {redact_url(url)!r} is not a PostgreSQL URL "
            "(postgresql://USER@HOST:PORT/DATABASE); leave it out for the embedded SQLite file"
        )
    if not parts.path.strip("/") and "dbname=" not in parts.query:
        raise ConfigurationError(
            f"database URL {redact_url(url)} names no database (postgresql://USER@HOST/DATABASE)"
        )
    return url


def database_url_from_environment() -> str | None:
    value = os.environ.get(DATABASE_URL_ENV, "").strip()
    return check_database_url(value) if value else None


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the netloc and in the query)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = (
        "&".join(
            "password=***" if item.lower().startswith("password=") else item
            for item in parts.query.split("&")
        )
        if parts.query
        else ""
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def without_password(text: str, url: str) -> str:
    """``text`` (a driver's message) with the password of ``url`` replaced by ``***``."""
    parts = urlsplit(url)
    secrets = [parts.password] if parts.password else []
    secrets += [
        item.split("=", 1)[1]
        for item in parts.query.split("&")
        if item.lower().startswith("password=") and "=" in item
    ]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# The file in a node or CA-system directory naming its PostgreSQL database (mode 0600: the URL
# may carry a password). Without it the directory's SQLite file is the store.
DATABASE_URL_FILE = "database.url"


def directory_database(directory: Path, sqlite_file: str) -> Path | str:
    """Where the store of ``directory`` lives: the URL in its database.url, else the SQLite
    file ``sqlite_file`` in it."""
    try:
        url = (directory / DATABASE_URL_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return directory / sqlite_file
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read {directory / DATABASE_URL_FILE}: {exc.strerror}"
        ) from None
    return check_database_url(url)


def record_database_url(directory: Path, url: str, sqlite_file: str) -> None:
    """Make the PostgreSQL database at ``url`` the store of ``directory``; refuse when the
    directory already keeps its records elsewhere (moving records is not a setting)."""
    check_database_url(url)
    current = directory_database(directory, sqlite_file)
    if current == url:
        return
    if isinstance(current, str) or current.exists():
        raise ConfigurationError(
            f"{directory} keeps its records in {redact_url(str(current))} already; a directory "
            "has one store (see docs/deploy.md for moving to PostgreSQL)"
        )
    from ztpki.secretfiles import write_private_file

    write_private_file(directory / DATABASE_URL_FILE, (url + "\n").encode())
