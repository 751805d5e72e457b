"""Tables on a narrow, non-terminal stdout (80 columns): the ids and serials an operator copies
into the next command fold onto several lines, never cut short with an ellipsis."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_node_cli import env, init_args, inputs, run  # noqa: F401 (its fixtures, reused)

from ztpki.cli.common import console
from ztpki.node.operations import open_register
from ztpki.store.records import AuditRecord

SERIAL = "19a925b8d8e0c1f2a3b4c5d6e7f8091a2b3c4d5e"
DEVICE = "ACME-B1-000001-with-a-long-device-id"


def column(out: str, index: int) -> str:
    """The cells of one table column, joined: a folded value becomes whole again."""
    cells = [line.split("│")[index].strip() for line in out.splitlines() if line.count("│") > 2]
    return "".join(cells)


def test_ok_audit_table_folds_serial_and_device(
    inputs: dict[str, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(console, "width", 80)
    assert run(*init_args(inputs))[0] == 0
    with open_register(inputs["node"]) as store:
        store.append_many(
            [
                AuditRecord(
                    at=datetime.now(UTC),
                    endpoint="est/default/simpleenroll",
                    decision="refused",
                    reason="the temporary certificate is revoked by its factory CA",
                    device_id=DEVICE,
                    serial=SERIAL,
                )
            ]
        )
    status, out = run("node", "audit", "--dir", str(inputs["node"]))
    assert status == 0
    assert "…" not in column(out, 7) and "…" not in column(out, 3)
    assert column(out, 7) == SERIAL
    assert column(out, 3) == DEVICE
