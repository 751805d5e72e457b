"""What the register commands print from the register and the audit trail is shown, never
obeyed: no rich markup is read in it, no control character reaches the terminal."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_node_cli import env, init_args, inputs, run  # noqa: F401 (its fixtures, reused)

from ztpki.cli.common import console
from ztpki.node.operations import open_register
from ztpki.store.records import AuditRecord

HOSTILE = "[/bold] \x1b]0;pwned\x07 \x9b2J [red]x\u202eevil\nfake line"
# Every character a terminal would act on; the rich console adds none when not a terminal.
OBEYED = ("\x1b", "\x07", "\x9b", "\u202e")


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    # Wide enough that no cell folds: each escaped sequence stays on one line to be found.
    monkeypatch.setattr(console, "width", 1000)


def _hostile_node(inputs: dict[str, Path]) -> str:  # noqa: F811 (the fixture's name)
    assert run(*init_args(inputs))[0] == 0
    node = str(inputs["node"])
    # A manufacturer's name is the operator's (it must be configured); the model is the factory's.
    add = ["node", "add", "--dir", node, "dev-1", "--fingerprint", "ab" * 32, "--model", HOSTILE]
    assert run(*add)[0] == 0
    with open_register(inputs["node"]) as store:
        # As a row written before reasons were quoted, or by any other writer.
        store.append_many(
            [
                AuditRecord(
                    at=datetime.now(UTC),
                    endpoint="est/default/simpleenroll",
                    decision="refused",
                    reason=HOSTILE,
                    device_id="dev-1",
                )
            ]
        )
    return node


def _assert_shown_not_obeyed(out: str) -> None:
    assert not any(c in out for c in OBEYED), repr(out)
    assert "[/bold]" in out and "[red]x" in out
    assert "\\x1b]0;pwned\\x07" in out and "\\x9b2J" in out and "\\u202eevil" in out


@pytest.mark.parametrize("command", ["audit", "devices"], ids=["ok-audit", "ok-devices"])
def test_ok_tables_print_markup_and_escapes_as_text(
    inputs: dict[str, Path],  # noqa: F811
    command: str,
) -> None:
    # audit shows the hostile reason; devices the hostile model.
    node = _hostile_node(inputs)
    status, out = run("node", command, "--dir", node)
    assert status == 0, out
    _assert_shown_not_obeyed(out)
    assert "\\nfake line" in out  # the newline shown, not a second row


def test_ok_json_output_escapes_control_characters(
    inputs: dict[str, Path],  # noqa: F811
) -> None:
    # The negative control of the table: JSON was always safe (json.dumps escapes them).
    node = _hostile_node(inputs)
    status, out = run("node", "audit", "--dir", node, "--json")
    assert status == 0
    assert not any(c in out for c in OBEYED)
