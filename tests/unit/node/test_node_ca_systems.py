"""node.toml's ca_system: one address (every node.toml so far) or several instances in order."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from test_node_cli import env, init_args, inputs, run  # noqa: F401 (fixtures)

from ztpki.errors import ConfigurationError
from ztpki.node.config import NodeConfig

NODE_TABLE = (
    'ca_client = "c"\nserver_cert = "s"\nserver_key = "k"\n'
    '[manufacturer.Acme]\ntrust = "t"\ndevice_ids = ["*"]\n'
)


def node_toml(tmp_path: Path, ca_system: str) -> Path:
    (tmp_path / "node.toml").write_text(f"[node]\nca_system = {ca_system}\n" + NODE_TABLE)
    return tmp_path


def test_ok_old_single_address_still_loads(tmp_path: Path) -> None:
    config = NodeConfig.load(node_toml(tmp_path, '"ca.example:7443"'))
    assert config.ca_systems == ("ca.example:7443",)
    config.save()  # written back in the form every ztpki reads
    assert tomllib.loads((tmp_path / "node.toml").read_text())["node"]["ca_system"] == (
        "ca.example:7443"
    )


def test_ok_several_addresses_keep_their_order(tmp_path: Path) -> None:
    config = NodeConfig.load(node_toml(tmp_path, '["b.example:7443", "a.example:7443"]'))
    assert config.ca_systems == ("b.example:7443", "a.example:7443")
    config.save()
    assert NodeConfig.load(tmp_path) == config


@pytest.mark.parametrize(
    ("case", "value"),
    [
        ("fail-empty-list", "[]"),
        ("fail-not-strings", "[7443]"),
        ("fail-twice", '["a:1", "a:1"]'),
        ("fail-not-host-port", '["a:1", "b"]'),
    ],
)
def test_fail_bad_ca_system(tmp_path: Path, case: str, value: str) -> None:
    with pytest.raises(ConfigurationError):
        NodeConfig.load(node_toml(tmp_path, value))


def test_ok_init_takes_several_and_set_ca_system_replaces_them(
    inputs: dict[str, Path],  # noqa: F811
) -> None:
    args = init_args(inputs)
    args[args.index("--ca") + 2 : args.index("--ca") + 2] = ["--ca", "127.0.0.2:7443"]
    status, out = run(*args)
    assert status == 0 and "127.0.0.1:7443, 127.0.0.2:7443" in out
    node = inputs["node"]
    assert NodeConfig.load(node).ca_systems == ("127.0.0.1:7443", "127.0.0.2:7443")

    status, out = run("node", "set-ca-system", "--dir", str(node), "--ca", "127.0.0.3:1")
    assert status == 0 and "127.0.0.3:1" in out
    assert NodeConfig.load(node).ca_systems == ("127.0.0.3:1",)
    # Negative control: a bad address is refused and changes nothing.
    before = (node / "node.toml").read_bytes()
    status, _ = run("node", "set-ca-system", "--dir", str(node), "--ca", "x:1", "--ca", "x:1")
    assert status != 0 and (node / "node.toml").read_bytes() == before
