"""The node's manufacturers: node.toml tables, `node add-manufacturer` (and the migration of an
older node.toml), `node manufacturers`, `node policy`, and `node add` naming a manufacturer."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w
from node_pki import PKI
from test_node_cli import env, init_args, inputs, run

from ztpki.cli.node_manufacturers import manufacturer_rows
from ztpki.errors import ConfigurationError
from ztpki.node.config import NodeConfig
from ztpki.node.manufacturers import ManufacturerConfig
from ztpki.pki.device_ids import DeviceIdNamespace
from ztpki.pki.pem import certificates_pem

__all__ = ["env", "inputs"]


def acme_init(files: dict[str, Path]) -> list[str]:
    """`node init` with Acme Devices owning ACME-* (init_args gives it every id)."""
    args = init_args(files)
    args[args.index("--device-ids") + 1] = "ACME-*"
    return args


def node_toml(files: dict[str, Path]) -> dict[str, object]:
    return tomllib.loads((files["node"] / "node.toml").read_text())


def other_bundle(tmp: Path) -> Path:
    path = tmp / "globex.pem"
    path.write_bytes(certificates_pem(PKI.create().bundle()))
    return path


def add_manufacturer(files: dict[str, Path], name: str, trust: Path, *ids: str) -> int:
    patterns = [a for i in ids for a in ("--device-ids", i)]
    args = ["node", "add-manufacturer", "--dir", str(files["node"]), "--manufacturer", name]
    return run(*args, "--trust", str(trust), *patterns)[0]


# ------------------------------------------------------------------ node.toml


def test_ok_manufacturer_table_round_trips(tmp_path: Path) -> None:
    maker = ManufacturerConfig(
        "Acme Devices",
        Path("trust/01-acme.pem"),
        DeviceIdNamespace.parse(["ACME-*", "OLD-1"]),
        ("sha256:" + "AB" * 32, "ab" * 32),
    )
    assert maker.manifest_signers == ("ab" * 32,)  # normalised, once
    table = maker.to_toml()
    assert table == {
        "trust": "trust/01-acme.pem",
        "device_ids": ["ACME-*", "OLD-1"],
        "manifest_signers": ["ab" * 32],
    }
    assert ManufacturerConfig.from_toml("Acme Devices", table) == maker


@pytest.mark.parametrize(
    ("name", "table", "message"),
    [
        ("Acme", {"trust": "t"}, "needs device_ids"),
        ("Acme", {"trust": "t", "device_ids": []}, "needs device_ids"),
        ("Acme", {"device_ids": ["A-*"]}, "needs trust"),
        ("Acme", {"trust": "t", "device_ids": ["A *"]}, "device-id pattern"),
        ("Acme", {"trust": "t", "device_ids": ["A-*"], "manifest_signers": ["xyz"]}, "signer"),
        ("Acme", {"trust": "t", "device_ids": ["A-*"], "signers": []}, "unknown setting"),
        ("", {"trust": "t", "device_ids": ["A-*"]}, "manufacturer name"),
        ("Ac\x1bme", {"trust": "t", "device_ids": ["A-*"]}, "manufacturer name"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_fail_bad_manufacturer_tables(name: str, table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ManufacturerConfig.from_toml(name, table)


def test_fail_overlapping_namespaces(inputs: dict[str, Path], tmp_path: Path) -> None:
    assert run(*acme_init(inputs))[0] == 0
    before = (inputs["node"] / "node.toml").read_bytes()
    assert add_manufacturer(inputs, "Globex", other_bundle(tmp_path), "GLX-*", "*-7") == 1
    assert add_manufacturer(inputs, "Acme Devices", other_bundle(tmp_path), "X-*") == 1
    assert (inputs["node"] / "node.toml").read_bytes() == before  # nothing written
    with pytest.raises(ConfigurationError, match=r"overlap \(both hold e.g. ACME-7\)"):
        config = NodeConfig.load(inputs["node"])
        clash = ManufacturerConfig("Globex", Path("g.pem"), DeviceIdNamespace.parse(["*-7"]))
        config.with_manufacturer(clash)


# ------------------------------------------------------------------ commands


def test_ok_add_manufacturer_policy_and_listing(inputs: dict[str, Path], tmp_path: Path) -> None:
    assert run(*acme_init(inputs))[0] == 0
    node = str(inputs["node"])
    assert add_manufacturer(inputs, "Globex", other_bundle(tmp_path), "GLX-*") == 0
    makers = node_toml(inputs)["manufacturer"]
    assert isinstance(makers, dict) and sorted(makers) == ["Acme Devices", "Globex"]
    assert makers["Globex"]["device_ids"] == ["GLX-*"]
    assert (inputs["node"] / makers["Globex"]["trust"]).exists()  # copied into the directory
    status, out = run("node", "manufacturers", "--dir", node, "--json")
    rows = {r["manufacturer"]: r for r in json.loads(out)}
    assert rows["Globex"]["device_ids"] == ["GLX-*"] and rows["Globex"]["trust_anchors"]
    status, text = run("node", "policy", "--dir", node)
    assert status == 0
    flat = " ".join(text.split())
    assert "# manufacturer Acme Devices device ids = ACME-*" in flat
    assert "manifest signers = any documentSigning certificate under its bundle" in flat
    assert "# manufacturer Globex device ids = GLX-*" in flat


def test_ok_node_add_by_manufacturer_and_its_refusals(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(*acme_init(inputs))[0] == 0
    node = str(inputs["node"])
    capsys.readouterr()
    refused = [
        ["ACME-1"],  # neither --fingerprint nor --manufacturer
        ["ACME-1", "--manufacturer", "Initech"],  # not a manufacturer of this node
        ["OTHER-1", "--manufacturer", "Acme Devices"],  # outside its device ids
        ["OTHER-1", "--manufacturer", "Initech", "--fingerprint", "ab" * 32],
    ]
    for args in refused:
        assert run("node", "add", "--dir", node, *args)[0] == 1, args
    err = " ".join(capsys.readouterr().err.split())
    assert "without --fingerprint unless --manufacturer" in err
    assert "'Initech' is not a manufacturer of this node (configured: 'Acme Devices')" in err
    assert "OTHER-1 is outside manufacturer Acme Devices's device ids (ACME-*)" in err
    assert json.loads(run("node", "devices", "--dir", node, "--json")[1]) == []
    assert json.loads(run("node", "audit", "--dir", node, "--json")[1]) == []
    # Controls: by manufacturer, by fingerprint alone, and by both.
    assert run("node", "add", "--dir", node, "ACME-1", "--manufacturer", "Acme Devices")[0] == 0
    assert run("node", "add", "--dir", node, "ANY-2", "--fingerprint", "ab" * 32)[0] == 0
    both = ["ACME-3", "--manufacturer", "Acme Devices", "--fingerprint", "cd" * 32]
    assert run("node", "add", "--dir", node, *both)[0] == 0
    devices = {
        d["device_id"]: d for d in json.loads(run("node", "devices", "--dir", node, "--json")[1])
    }
    assert devices["ACME-1"]["manufacturer"] == "Acme Devices"
    assert devices["ANY-2"]["manufacturer"] is None
    audit = json.loads(run("node", "audit", "--dir", node, "--json", "--device", "ACME-1")[1])
    assert audit[0]["reason"] == "listed by hand for manufacturer Acme Devices"


# ------------------------------------------------------------------ migration


def _make_legacy(files: dict[str, Path]) -> Path:
    """Rewrite node.toml as the previous ztpki wrote it: bare bundles in [node] trust."""
    data = node_toml(files)
    makers = data.pop("manufacturer")
    assert isinstance(makers, dict)
    (maker,) = makers.values()
    node = data["node"]
    assert isinstance(node, dict)
    node["trust"] = [maker["trust"]]
    (files["node"] / "node.toml").write_text(tomli_w.dumps(data))
    return files["node"] / maker["trust"]


def test_ok_legacy_node_toml_is_refused_then_migrated(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(*acme_init(inputs))[0] == 0
    node = str(inputs["node"])
    legacy = _make_legacy(inputs)
    with pytest.raises(ConfigurationError, match="without a manufacturer") as refused:
        NodeConfig.load(inputs["node"])
    assert "ztpki node add-manufacturer --dir" in refused.value.message
    capsys.readouterr()
    assert run("node", "add", "--dir", node, "ACME-1", "--manufacturer", "Acme Devices")[0] == 1
    assert "node add-manufacturer" in " ".join(capsys.readouterr().err.split())
    # The register stays readable, and `node manufacturers` shows what is left to declare.
    assert run("node", "devices", "--dir", node)[0] == 0
    rows = json.loads(run("node", "manufacturers", "--dir", node, "--json")[1])
    assert [(r["manufacturer"], r["trust"]) for r in rows] == [(None, str(legacy))]
    # Declaring the bundle's manufacturer migrates it.
    assert add_manufacturer(inputs, "Acme Devices", legacy, "ACME-*") == 0
    config = NodeConfig.load(inputs["node"])
    assert [m.name for m in config.manufacturers] == ["Acme Devices"]
    assert config.legacy_trust == ()
    node_table = node_toml(inputs)["node"]
    assert isinstance(node_table, dict) and "trust" not in node_table
    assert run("node", "add", "--dir", node, "ACME-1", "--manufacturer", "Acme Devices")[0] == 0


def test_fail_init_with_two_bundles_is_a_usage_error(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before manufacturers, --trust was repeatable; now a second one would be dropped
    silently by the option parser, so it is refused instead."""
    status, _ = run(*acme_init(inputs), "--trust", str(inputs["bundle"]))
    assert status == 2 and not inputs["node"].exists()
    assert "one --manufacturer and its one --trust" in " ".join(capsys.readouterr().err.split())


def test_ok_node_toml_without_manufacturers_is_refused_then_fixed(inputs: dict[str, Path]) -> None:
    assert run(*acme_init(inputs))[0] == 0
    data = node_toml(inputs)
    makers = data.pop("manufacturer")
    (inputs["node"] / "node.toml").write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigurationError, match="declares no manufacturer"):
        NodeConfig.load(inputs["node"])
    assert isinstance(makers, dict)
    bundle = inputs["node"] / makers["Acme Devices"]["trust"]
    assert add_manufacturer(inputs, "Acme Devices", bundle, "ACME-*") == 0
    assert [m.name for m in NodeConfig.load(inputs["node"]).manufacturers] == ["Acme Devices"]


def test_ok_manufacturer_without_crl_source_is_warned(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    """A recall reaches the node only from a CRL it knows of: a manufacturer without one is
    named at init, at add-manufacturer and in the listing (not shown as fail-closed)."""
    status, out = run(*acme_init(inputs))
    flat = " ".join(out.split())
    assert status == 0
    assert (
        "temporary certificates of Acme Devices are checked for revocation only if they name "
        "a CRL distribution point; give --crl-url" in flat
    )
    node = str(inputs["node"])
    status, out = run("node", "manufacturers", "--dir", node)
    flat = " ".join(out.split())
    assert "factory CRLs = none configured: temporary certificates of Acme Devices" in flat
    assert "fail_open" not in flat
    rows = json.loads(run("node", "manufacturers", "--dir", node, "--json")[1])
    assert rows[0]["crl_configured"] is False
    # Globex with a CRL URL: no warning for it, and the listing shows its CRL.
    args = ["node", "add-manufacturer", "--dir", node, "--manufacturer", "Globex"]
    status, out = run(
        *args, "--trust", str(other_bundle(tmp_path)), "--device-ids", "GLX-*",
        "--crl-url", "http://127.0.0.1:7445/crl/globex.crl",
    )  # fmt: skip
    assert status == 0 and "checked for revocation only" not in out
    out = " ".join(run("node", "manufacturers", "--dir", node)[1].split())
    assert "factory CRLs = http://127.0.0.1:7445/crl/globex.crl (every 60 min" in out


def test_ok_init_with_crl_url_or_file_is_not_warned(inputs: dict[str, Path]) -> None:
    status, out = run(*acme_init(inputs), "--crl-url", "http://127.0.0.1:7445/crl/f.crl")
    assert status == 0 and "checked for revocation only" not in out


def test_ok_init_with_static_crl_is_not_warned(inputs: dict[str, Path]) -> None:
    status, out = run(*acme_init(inputs), "--crl", str(inputs["crl"]))
    assert status == 0 and "checked for revocation only" not in out
    out = " ".join(run("node", "manufacturers", "--dir", str(inputs["node"]))[1].split())
    assert "factory CRLs = the CRL files given to `node init --crl`" in out


def test_fail_manufacturer_with_another_manufacturers_trust(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    """Evil declared with ACME's bundle would let ACME's factory CA act for EVL-* devices."""
    assert run(*acme_init(inputs))[0] == 0
    before = sorted((p.name, p.read_bytes()) for p in inputs["node"].rglob("*") if p.is_file())
    assert add_manufacturer(inputs, "Evil", inputs["bundle"], "EVL-*") == 1
    after = sorted((p.name, p.read_bytes()) for p in inputs["node"].rglob("*") if p.is_file())
    assert after == before  # nothing written, no trust file copied
    # A bundle sharing only one certificate (the root, here) is refused as well.
    shared = tmp_path / "shared.pem"
    acme = inputs["bundle"].read_bytes()
    shared.write_bytes(acme + other_bundle(tmp_path).read_bytes())
    assert add_manufacturer(inputs, "Evil", shared, "EVL-*") == 1
    # A node.toml edited by hand to the same effect does not load.
    toml = node_toml(inputs)
    makers = toml["manufacturer"]
    assert isinstance(makers, dict)
    makers["Evil"] = {"trust": makers["Acme Devices"]["trust"], "device_ids": ["EVL-*"]}
    (inputs["node"] / "node.toml").write_text(tomli_w.dumps(toml))
    with pytest.raises(ConfigurationError, match="a trust anchor of manufacturer Acme Devices"):
        manufacturer_rows(NodeConfig.load(inputs["node"]))
