"""`ztpki device discover`: the customer nodes a device finds, and whether each verifies.

Nothing of the device's own is sent: each candidate is verified over a connection that
presents no certificate, as the agent does before it chooses one. Exit status 0 when at
least one candidate verifies, 1 otherwise.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from ztpki.cli.common import print_json
from ztpki.cli.device import device, plain_errors
from ztpki.cli.device_agent import _pin
from ztpki.cli.device_options import (
    _given_pin,
    device_option,
    fingerprint_option,
    json_option,
    node_ca_option,
    timeout_option,
)
from ztpki.cli.discovery_options import discovery_options
from ztpki.device.discovery import DiscoverySettings
from ztpki.device.memory import DeviceMemory
from ztpki.device.node_finder import CandidateCheck, check_candidates
from ztpki.untrusted import displayable


def _as_json(check: CandidateCheck) -> dict[str, Any]:
    record = check.candidate.record
    return {
        "node": str(check.candidate.node),
        "addresses": list(record.addresses),
        "source": record.source,
        "instance": record.instance,
        "priority": record.priority,
        "weight": record.weight,
        "ca_hint": f"sha256:{record.ca_hint}" if record.ca_hint else None,
        "verified": check.verified,
        "detail": check.proof or check.problem,
    }


@device.command("discover")
@device_option
@fingerprint_option
@node_ca_option
@discovery_options
@timeout_option
@json_option
@plain_errors
def discover_command(
    device_dir: Path,
    node_ca_fingerprint: str | None,
    node_ca: x509.Certificate | None,
    discovery: DiscoverySettings,
    timeout: float,
    as_json: bool,
) -> None:
    """List the customer nodes announced by mDNS and DNS-SD, in the order the agent tries
    them, and whether each verifies with the device's anchors (or pinned node CA)."""
    if not discovery.enabled:
        raise click.UsageError("--no-mdns and --no-dns-sd leave nothing to look in")
    memory = DeviceMemory.open(device_dir)
    pin = _pin(memory, _given_pin(node_ca_fingerprint, node_ca))
    finding, checks = asyncio.run(
        check_candidates(memory, discovery, pin, now=lambda: datetime.now(UTC), timeout=timeout)
    )
    if as_json:
        print_json({"candidates": [_as_json(c) for c in checks], "problems": finding.problems})
    else:
        for problem in finding.problems:
            click.echo(f"note: {displayable(problem)}", err=True)
        if not checks:
            click.echo("no customer node is announced (mDNS or DNS-SD)")
        for check in checks:
            verdict = "verified" if check.verified else "does not verify"
            # Announcements are anyone's words: their control characters are shown, not obeyed.
            click.echo(f"{displayable(check.candidate.describe())}: {verdict}")
            click.echo(f"    {displayable(check.proof or check.problem or '')}")
    if not any(c.verified for c in checks):
        raise SystemExit(1)
