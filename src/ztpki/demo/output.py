"""What the demo shows: its tables and summary, sized for an 80-column terminal, and where
the log lines of its own process go (a file in the work directory, unless --verbose)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ztpki.demo.fleet import DeviceOutcome, IdentityView
from ztpki.logs import TEXT_FORMAT

SERIAL_SHOWN = 10  # hex digits of a serial in the narrow table: enough to tell devices apart


def log_to_file(path: Path, *, verbose: bool) -> None:
    """Send this process's log records to ``path``; keep them on the terminal only if verbose.

    The demo's output is its tables: INFO lines of the in-process devices and the proof
    service interleaved with them read like errors to a newcomer."""
    root = logging.getLogger()
    if not verbose:
        for handler in list(root.handlers):
            stream = getattr(handler, "stream", None)
            if not isinstance(handler, logging.FileHandler) and stream in (sys.stderr, sys.stdout):
                root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)


def print_tables(
    console: Console, outcomes: list[DeviceOutcome], summary: dict[str, Any], *, wide: bool
) -> None:
    console.print(_wide_identities(outcomes) if wide else _identities(outcomes))
    register = Table("state", "devices", title="authorization register")
    for state, count in sorted(summary["register"].items()):
        register.add_row(state, str(count))
    audit = Table(
        "decision",
        "entries",
        title="audit trail ("
        + ("chain verifies" if summary["audit"]["chain_verifies"] else "CHAIN BROKEN")
        + ")",
    )
    for decision, count in sorted(summary["audit"]["decisions"].items()):
        audit.add_row(decision, str(count))
    phases = Table("phase", "seconds", title="phases")
    for name, seconds in summary["phases"].items():
        phases.add_row(name, f"{seconds:.2f}")
    console.print(register, audit, phases)
    proof = summary["proof"]
    replay = proof["replayed_temporary_certificate_status"]
    console.print(
        f"customized {summary['customized']}/{len(outcomes)} devices at "
        f"[bold]{summary['enrollments_per_second']}[/] enrollments/s"
    )
    console.print(
        f"{proof['greeted_with_new_identity']} greeted by a customer-only TLS service with "
        "their new identity; a temporary identity was refused by it before: "
        f"{proof['temporary_identity_refused_by_customer_service']}"
    )
    console.print(
        f"replayed temporary certificate at the node: HTTP {replay} ({proof['replay_reason']})"
    )
    console.rule(
        "[green]demo passed[/]" if proof["ok"] and summary["failed"] == 0 else "[red]demo FAILED[/]"
    )


def _identities(outcomes: list[DeviceOutcome]) -> Table:
    """One line a device: serials before and after (`--wide` and the JSON have the rest)."""
    table = Table(
        title="device identities: factory → customer", caption="issuers and fingerprints: --wide"
    )
    columns = ("device", "mode", "factory serial", "customer serial", "result")
    return _fill(table, columns, outcomes, _serial, _short_mode)


def _wide_identities(outcomes: list[DeviceOutcome]) -> Table:
    table = Table(title="device identities: before (factory) → after (customer)")
    columns = (
        "device",
        "mode",
        "before: issuer / serial / sha256",
        "after: issuer / serial / sha256",
        "result",
    )
    return _fill(
        table,
        columns,
        outcomes,
        _identity_cell,
        lambda o: f"{o.key_mode.value} ({o.protocol.value})",
    )


def _fill(
    table: Table,
    columns: tuple[str, ...],
    outcomes: list[DeviceOutcome],
    identity: Callable[[IdentityView | None], str],
    mode: Callable[[DeviceOutcome], str],
) -> Table:
    for column in columns:
        table.add_column(column, overflow="fold")
    for o in outcomes:
        table.add_row(o.device_id, mode(o), identity(o.before), identity(o.after), _result(o))
    return table


def _short_mode(o: DeviceOutcome) -> str:
    # "serverkeygen": the CA side made the key; "simpleenroll": the device did.
    key = {"serverkeygen": "server key", "simpleenroll": "own key"}.get(o.key_mode.value)
    return f"{o.protocol.value} {key or o.key_mode.value}"


def _result(o: DeviceOutcome) -> str:
    if o.error is None and o.greeted:
        return "[green]ok[/]"
    return f"[red]{o.error or 'not greeted'}[/]"


def _serial(view: IdentityView | None) -> str:
    return "-" if view is None else view.serial[:SERIAL_SHOWN] + "…"


def _identity_cell(view: IdentityView | None) -> str:
    if view is None:
        return "-"
    return f"{_common_name(view.issuer)}\n{view.serial}\n{view.fingerprint}"


def _common_name(rfc4514: str) -> str:
    """The CN of an RFC 4514 name, to keep the table narrow (the JSON has the full name)."""
    for part in rfc4514.split(","):
        if part.startswith("CN="):
            return part[3:]
    return rfc4514
