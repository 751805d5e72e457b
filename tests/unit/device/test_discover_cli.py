"""`device discover` and the agent's discovery options: usage errors, before anything is
read or any packet sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ztpki.cli import cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--dns-server", "dns.example"], "--dns-server"),
        (["--dns-server", "127.0.0.1:0"], "--dns-server"),
        (["--mdns-interface", "eth0"], "--mdns-interface"),
        (["--browse-time", "0"], "--browse-time"),
    ],
    ids=["dns-server-name", "dns-server-port-0", "interface-name", "browse-time-0"],
)
@pytest.mark.parametrize("command", ["discover", "agent"])
def test_fail_bad_discovery_option_is_a_usage_error(
    tmp_path: Path, command: str, args: list[str], named: str
) -> None:
    result = run("device", command, "--device", str(tmp_path / "none"), *args)
    assert result.exit_code == 2, result.output
    assert named in result.stderr
    assert not (tmp_path / "none").exists()


def test_fail_discover_with_nowhere_to_look(tmp_path: Path) -> None:
    result = run("device", "discover", "--device", str(tmp_path), "--no-mdns", "--no-dns-sd")
    assert result.exit_code == 2
    assert "nothing to look in" in result.stderr


@pytest.mark.parametrize("option", [["--announce-host", "n.example"], ["--announce-label", "x"]])
def test_fail_announce_details_without_announce(tmp_path: Path, option: list[str]) -> None:
    result = run("node", "serve", "--dir", str(tmp_path), *option, "--insecure-no-passphrase")
    assert result.exit_code == 2
    assert "need --announce" in result.stderr
