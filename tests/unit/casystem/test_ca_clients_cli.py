"""`ztpki ca add-client | set-client | list-clients | refusals` in-process: what a CA-client
may ask for is given, shown and changed by the operator, and bad input changes nothing.

The end-to-end tests (tests/e2e/test_casystem_entitlement.py) serve the result over TLS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.operations import open_store
from ztpki.cli import main
from ztpki.store.records import ClientEntitlement

CA_PASSPHRASE = "cli-test-ca-passphrase"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", CA_PASSPHRASE)
    monkeypatch.setenv("ZTPKI_CLIENT_PASSPHRASE", "client-passphrase-1")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root, factory (device) and nodes (server): made once, copied per test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZTPKI_CA_PASSPHRASE", CA_PASSPHRASE)
        plant = tmp_path_factory.mktemp("template") / "plant"
        for args in (
            ["--name", "root"],
            ["--name", "factory", "--parent", "root", "--default"],
            ["--name", "nodes", "--parent", "root", "--profile", "server"],
        ):
            assert main(["ca", "init", "--dir", str(plant), *args]) == 0
    return plant


@pytest.fixture
def plant(template: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(template, tmp_path / "plant"))


def add(plant: Path, name: str, *rights: str) -> int:
    out = plant.parent / f"cred-{name}"
    return main(
        ["ca", "add-client", "--dir", str(plant), "--name", name, "--out", str(out), *rights]
    )


def entitlements(plant: Path) -> dict[str, ClientEntitlement | None]:
    with open_store(CASystemDirectory(plant)) as store:
        return {c.name: c.entitlement for c in store.clients() if c.status == "active"}


def listed(plant: Path, capsys: pytest.CaptureFixture[str], *command: str) -> Any:
    capsys.readouterr()
    assert main(["ca", *command, "--dir", str(plant), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ok_add_client_stores_and_lists_its_entitlement(
    plant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rights = ["--ca", "factory", "--ca", "nodes", "--device-ids", "ACME-*"]
    rights += ["--dns", "*.Node.Example.com", "--ip", "127.0.0.1", "--ip", "10.0.0.0/8"]
    assert add(plant, "line-1", *rights) == 0
    assert entitlements(plant) == {
        "line-1": ClientEntitlement(
            cas=("factory", "nodes"),
            device_ids=("ACME-*",),
            dns_names=("*.node.example.com",),
            ip_ranges=("127.0.0.1/32", "10.0.0.0/8"),
        )
    }
    [shown] = listed(plant, capsys, "list-clients")
    assert shown["entitlement"] == {
        "cas": ["factory", "nodes"],
        "device_ids": ["ACME-*"],
        "dns": ["*.node.example.com"],
        "ip": ["127.0.0.1/32", "10.0.0.0/8"],
    }
    assert listed(plant, capsys, "clients") == [shown]  # the old name still answers


def test_ok_device_ids_default_to_any(plant: Path) -> None:
    assert add(plant, "node-1", "--ca", "factory") == 0
    assert entitlements(plant)["node-1"] == ClientEntitlement(cas=("factory",), device_ids=("*",))


@pytest.mark.parametrize(
    ("rights", "status", "said"),
    [
        pytest.param((), 2, "--ca NAME", id="fail-no-ca-named"),
        pytest.param(("--ca", "factory", "--device-ids", "AC ME"), 2, "device-id", id="fail-id"),
        pytest.param(("--ca", "nodes", "--dns", "*.com"), 2, "DNS pattern", id="fail-dns"),
        pytest.param(("--ca", "nodes", "--ip", "10.0.0.1/8"), 2, "IP range", id="fail-ip"),
        pytest.param(("--ca", "nodes", "--ip", "0.0.0.0/0"), 2, "any address", id="fail-ip4-all"),
        pytest.param(("--ca", "nodes", "--ip", "::/0"), 2, "any address", id="fail-ip6-all"),
        pytest.param(("--ca", "ghost"), 1, "no CA named 'ghost'", id="fail-unknown-ca"),
    ],
)
def test_fail_add_client_with_bad_entitlement_registers_nothing(
    plant: Path,
    capsys: pytest.CaptureFixture[str],
    rights: tuple[str, ...],
    status: int,
    said: str,
) -> None:
    assert add(plant, "line-1", *rights) == status
    assert said in " ".join(capsys.readouterr().err.split())
    assert entitlements(plant) == {}
    assert not (plant.parent / "cred-line-1").exists()


def test_ok_set_client_replace_add_remove_clear(plant: Path) -> None:
    assert add(plant, "c", "--ca", "factory", "--device-ids", "ACME-*") == 0

    def set_client(*args: str) -> ClientEntitlement | None:
        assert main(["ca", "set-client", "--dir", str(plant), "--name", "c", *args]) == 0
        return entitlements(plant)["c"]

    after = set_client("--ca", "nodes", "--ip", "127.0.0.1")  # replaces the lists given
    assert after == ClientEntitlement(
        cas=("nodes",), device_ids=("ACME-*",), ip_ranges=("127.0.0.1/32",)
    )
    after = set_client("--add", "--ca", "factory", "--dns", "node.example.com")
    assert after is not None and after.cas == ("nodes", "factory")
    assert after.dns_names == ("node.example.com",)
    after = set_client("--remove", "--ca", "nodes")
    assert after is not None and after.cas == ("factory",)
    after = set_client("--clear", "ip", "--clear", "dns")
    assert after == ClientEntitlement(cas=("factory",), device_ids=("ACME-*",))


@pytest.mark.parametrize(
    ("args", "status"),
    [
        pytest.param((), 2, id="fail-nothing-to-change"),
        pytest.param(("--clear", "cas", "--ca", "nodes"), 2, id="fail-clear-and-set"),
        pytest.param(("--add", "--clear", "cas"), 2, id="fail-clear-with-add"),
        pytest.param(("--ca", "ghost"), 1, id="fail-unknown-ca"),
        pytest.param(("--dns", "bad name"), 2, id="fail-bad-dns"),
        pytest.param(("--add", "--ip", "::/0"), 2, id="fail-add-every-ip6"),
        pytest.param(("--ip", "0.0.0.0/0"), 2, id="fail-every-ip4"),
    ],
)
def test_fail_set_client_bad_change_changes_nothing(
    plant: Path, args: tuple[str, ...], status: int
) -> None:
    assert add(plant, "c", "--ca", "factory") == 0
    before = entitlements(plant)
    assert main(["ca", "set-client", "--dir", str(plant), "--name", "c", *args]) == status
    assert entitlements(plant) == before


def test_fail_set_client_of_unknown_or_removed_client(
    plant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add(plant, "c", "--ca", "factory") == 0
    assert main(["ca", "remove-client", "--dir", str(plant), "--name", "c"]) == 0
    capsys.readouterr()
    for name in ("c", "never"):
        assert main(["ca", "set-client", "--dir", str(plant), "--name", name, "--ca", "nodes"]) == 1
        assert "no registered CA-client" in capsys.readouterr().err
    with open_store(CASystemDirectory(plant)) as store:
        [removed] = store.clients()
    assert removed.entitlement == ClientEntitlement(cas=("factory",))


def test_ok_refusals_listed_empty(plant: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert listed(plant, capsys, "refusals") == []


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("list-clients",), id="list-clients"),
        pytest.param(("refusals",), id="refusals"),
        pytest.param(("issued",), id="issued"),
        pytest.param(("set-client", "--name", "c", "--ca", "nodes"), id="set-client"),
        pytest.param(("remove-client", "--name", "c"), id="remove-client"),
        pytest.param(("status", "--name", "factory", "--serial", "0a"), id="status"),
        pytest.param(("crl", "--name", "factory", "--out", "x.crl"), id="crl"),
        pytest.param(
            ("revoke", "--name", "factory", "--serial", "0a", "--reason", "superseded"), id="revoke"
        ),
        pytest.param(("release-hold", "--name", "factory", "--serial", "0a"), id="release-hold"),
    ],
)
def test_fail_command_on_a_directory_that_is_no_ca_system_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    empty = tmp_path / "emptydir"
    empty.mkdir()
    name, *rest = command
    assert main(["ca", name, "--dir", str(empty), *rest]) != 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"{empty} is not a CA-system directory" in said or "no CA named" in said, said
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("add-client", "--name", "c", "--out", "cred", "--ca", "nodes"), id="add"),
        pytest.param(("init", "--name", "more", "--parent", "root"), id="init-another"),
        pytest.param(
            ("revoke", "--name", "nodes", "--serial", "0a", "--reason", "superseded"), id="revoke"
        ),
        pytest.param(("release-hold", "--name", "nodes", "--serial", "0a"), id="release-hold"),
        pytest.param(("serve", "--listen", "127.0.0.1:0"), id="serve"),
    ],
)
def test_fail_short_wrong_passphrase_of_existing_keys_is_wrong_not_too_short(
    plant: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: tuple[str, ...],
) -> None:
    # The length rule is for new keys; on a system that holds keys, "short" is just wrong.
    monkeypatch.chdir(plant.parent)
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", "short")
    before = sorted(p.relative_to(plant) for p in plant.rglob("*"))
    name, *rest = command
    assert main(["ca", name, "--dir", str(plant), *rest]) != 0
    said = " ".join(capsys.readouterr().err.split())
    assert "wrong or missing passphrase" in said and "at least" not in said, said
    assert sorted(p.relative_to(plant) for p in plant.rglob("*")) == before


def test_fail_short_passphrase_for_a_new_system_names_the_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", "short")
    assert main(["ca", "init", "--dir", str(tmp_path / "new"), "--name", "root"]) != 0
    assert "must have at least 8 characters" in capsys.readouterr().err
