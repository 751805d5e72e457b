"""`ztpki doctor`: check a node's or a CA system's directory and say how to fix what is wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from ztpki.cli.common import console, print_json

_STYLE = {"ok": "green", "warning": "yellow", "error": "red"}


@click.command("doctor")
@click.option(
    "--node-dir",
    "node_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="A customer node's directory; repeatable.",
)
@click.option(
    "--ca-dir",
    "ca_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="A CA system's directory; repeatable.",
)
@click.option(
    "--warn-days",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="Warn about certificates that expire within this many days.",
)
@click.option("--offline", is_flag=True, help="Do not contact CA systems or fetch CRLs over HTTP.")
@click.option("--all", "show_all", is_flag=True, help="Also list the checks that passed.")
@click.option("--strict", is_flag=True, help="Exit with status 1 on warnings too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finding, in a list.")
def doctor(
    node_dirs: tuple[Path, ...],
    ca_dirs: tuple[Path, ...],
    warn_days: int,
    offline: bool,
    show_all: bool,
    strict: bool,
    as_json: bool,
) -> None:
    """Check a deployment: expiring certificates, unreachable CA systems, stale CRLs, key file
    permissions, schemas to migrate, manufacturers without pinned manifest signers.

    Exit status 0 when nothing is wrong (warnings allowed unless --strict), 1 otherwise."""
    from ztpki.doctor.ca_checks import check_ca_system
    from ztpki.doctor.findings import Severity, worst
    from ztpki.doctor.node_checks import check_node

    if not node_dirs and not ca_dirs:
        raise click.UsageError("give --node-dir DIR and/or --ca-dir DIR")
    now, warn_before = datetime.now(UTC), timedelta(days=warn_days)
    findings = [
        *(
            f
            for d in node_dirs
            for f in check_node(d, now=now, warn_before=warn_before, network=not offline)
        ),
        *(f for d in ca_dirs for f in check_ca_system(d, now=now, warn_before=warn_before)),
    ]
    if as_json:
        print_json([f.as_dict() for f in findings])
    else:
        for f in findings:
            if f.severity is Severity.OK and not show_all:
                continue
            word = f.severity.word
            console.print(f"[{_STYLE[word]}]{word:7}[/] {f.subject}: ", end="")
            console.print(f.message, markup=False, highlight=False)
            if f.fix:
                console.print(f"        fix: {f.fix}", markup=False, highlight=False)
        counts = {s: sum(f.severity is s for f in findings) for s in Severity}
        console.print(
            f"{len(findings)} checks: {counts[Severity.OK]} ok, "
            f"{counts[Severity.WARNING]} warning(s), {counts[Severity.ERROR]} error(s)",
            markup=False,
        )
    verdict = worst(findings)
    if verdict is Severity.ERROR or (strict and verdict is Severity.WARNING):
        raise SystemExit(1)
