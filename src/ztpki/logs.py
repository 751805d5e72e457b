"""How every ztpki service logs: text lines by default, or one JSON object a line.

Log lines name the device, serial and request they concern. In JSON those are fields of their
own, so that a log pipeline can follow one device or one request across the node and the CA
systems without parsing messages: a request handler binds them once (``log_fields``) and
every line logged while it runs carries them, and a line may add its own (``extra=``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The fields a line may carry, in the order JSON shows them. Anything else passed in
# ``extra`` stays out: a field name is a contract with the operator's log pipeline.
FIELDS = ("device_id", "serial", "request_id", "ca", "client", "label", "peer", "worker")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_bound: ContextVar[Mapping[str, str]] = ContextVar("ztpki_log_fields", default=_EMPTY)


@contextmanager
def log_fields(**fields: str | None) -> Iterator[None]:
    """Bind fields for every line logged inside the block (in this task), restored after.

    A block per request, not per connection: requests of one kept-alive connection run one
    after another in one task, and must not inherit each other's device."""
    token = _bound.set(_merged(_bound.get(), fields))
    try:
        yield
    finally:
        _bound.reset(token)


def bind(**fields: str | None) -> None:
    """Add fields inside the current ``log_fields`` block (learned as the request goes on)."""
    _bound.set(_merged(_bound.get(), fields))


def _merged(current: Mapping[str, str], fields: Mapping[str, str | None]) -> Mapping[str, str]:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    added = {k: str(v) for k, v in fields.items() if v is not None}
    return MappingProxyType({**current, **added}) if added else current


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ms), level, logger, message, the bound fields and
    the line's own, and the traceback of an exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        bound = _bound.get()
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = bound.get(name)
            if value is not None:
                document[name] = str(value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def configure_logging(level: str, log_format: str) -> None:
    """(Re)configure the root logger: the CLI calls it once, a service's option again.

    Like ``logging.basicConfig``, it leaves alone a root logger that someone else equipped
    (a test runner capturing logs, an embedding application); it replaces only its own."""
    global _installed
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    if any(h is not _installed for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    _installed = handler


_installed: logging.Handler | None = None
