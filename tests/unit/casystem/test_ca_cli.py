"""`ztpki ca init` in-process: parent options that only make sense together, path lengths, and
the warning an unencrypted key gets whatever the log level.

The end-to-end tests run the same commands in their own processes and serve the result.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from ztpki.casystem.directory import CASystemDirectory
from ztpki.cli import main

CA_PASSPHRASE = "cli-test-ca-passphrase"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", CA_PASSPHRASE)


def init(directory: Path, name: str, *args: str) -> int:
    return main(["ca", "init", "--dir", str(directory), "--name", name, *args])


@pytest.fixture
def plant(tmp_path: Path) -> Path:
    directory = tmp_path / "plant"
    assert init(directory, "root") == 0
    return directory


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(["--parent-dir", "PLANT"], "--parent-dir", id="fail-parent-dir-alone"),
        pytest.param(
            ["--parent-passphrase-file", "PLANT/pw"],
            "--parent-passphrase-file",
            id="fail-parent-passphrase-alone",
        ),
        pytest.param(["--path-length", "1"], "--path-length", id="fail-path-length-alone"),
    ],
)
def test_fail_parent_options_without_parent_are_usage_errors(
    plant: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    named: str,
) -> None:
    (plant / "pw").write_text(CA_PASSPHRASE)
    target = tmp_path / "customer"
    status = init(target, "customer", *(a.replace("PLANT", str(plant)) for a in args))
    assert status == 2
    err = capsys.readouterr().err
    assert named in err and "--parent" in err
    assert not target.exists()  # no root was made instead


def test_ok_parent_alone_means_this_system_and_with_dir_another(
    plant: Path, tmp_path: Path
) -> None:
    root = CASystemDirectory(plant).certificate("root")
    assert init(plant, "factory", "--parent", "root") == 0
    customer = tmp_path / "customer"
    assert init(customer, "customer", "--parent-dir", str(plant), "--parent", "root") == 0
    for directory, name in ((plant, "factory"), (customer, "customer")):
        system = CASystemDirectory(directory)
        assert system.parents(name) == (root,)
        system.certificate(name).verify_directly_issued_by(root)


def test_ok_path_length_option_and_refused_sub_of_sub(
    plant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(plant, "mid", "--parent", "root", "--path-length", "1") == 0
    assert init(plant, "issuing", "--parent", "mid") == 0
    system = CASystemDirectory(plant)
    for name, expected in (("mid", 1), ("issuing", 0)):
        constraints = system.certificate(name).extensions.get_extension_for_class(
            x509.BasicConstraints
        )
        assert constraints.value.path_length == expected
    capsys.readouterr()
    assert init(plant, "deeper", "--parent", "issuing") == 1
    err = capsys.readouterr().err
    assert "path length 0" in err and "Traceback" not in err
    assert not system.ca_dir("deeper").exists()
    assert system.ca_names() == ["issuing", "mid", "root"]


def test_fail_second_ca_under_another_passphrase(
    plant: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZTPKI_CA_PASSPHRASE", "another-ca-passphrase")
    assert init(plant, "other") == 1
    err = capsys.readouterr().err
    assert "wrong or missing passphrase" in err and "another-ca-passphrase" not in err
    assert not CASystemDirectory(plant).ca_dir("other").exists()


@pytest.mark.parametrize("level", ["info", "error"])
def test_ok_insecure_warning_on_stderr_at_any_log_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], level: str
) -> None:
    monkeypatch.delenv("ZTPKI_CA_PASSPHRASE")
    target = tmp_path / "demo"
    argv = ["--log-level", level, "ca", "init", "--dir", str(target), "--name", "root"]
    assert main(argv) == 1  # control: no passphrase and no flag is refused, silently
    assert "INSECURE" not in capsys.readouterr().err
    assert main([*argv, "--insecure-no-passphrase"]) == 0
    err = capsys.readouterr().err
    assert err.count("INSECURE") == 1 and "the CA private key" in err


# ------------------------------------------------------- usability: flags that contradict


@pytest.mark.parametrize("with_file", [False, True], ids=["env", "file"])
def test_fail_insecure_flag_with_a_passphrase_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_file: bool
) -> None:
    """ZTPKI_CA_PASSPHRASE (or --passphrase-file) and --insecure-no-passphrase: refused, not
    one of them silently ignored."""
    target = tmp_path / "demo"
    extra: list[str] = []
    if with_file:
        (tmp_path / "pw").write_text(CA_PASSPHRASE)
        extra = ["--passphrase-file", str(tmp_path / "pw")]
    assert init(target, "root", "--insecure-no-passphrase", *extra) == 2
    err = capsys.readouterr().err
    assert "--insecure-no-passphrase" in err
    assert ("--passphrase-file" if with_file else "ZTPKI_CA_PASSPHRASE") in err
    assert not target.exists()


def test_fail_insecure_client_key_with_client_passphrase_is_a_usage_error(
    plant: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZTPKI_CLIENT_PASSPHRASE", "client-passphrase-1")
    out = tmp_path / "cred"
    argv = [
        "ca",
        "add-client",
        "--dir",
        str(plant),
        "--name",
        "c1",
        "--out",
        str(out),
        "--ca",
        "root",
    ]
    assert main([*argv, "--insecure-client-key"]) == 2
    err = capsys.readouterr().err
    assert "--insecure-client-key" in err and "ZTPKI_CLIENT_PASSPHRASE" in err
    assert not out.exists()
    assert main(argv) == 0  # control: the same command without the flag


# ------------------------------------------------------- usability: --out is never clobbered


def clients(plant: Path) -> list[tuple[str, str]]:
    from ztpki.casystem.operations import open_store

    with open_store(CASystemDirectory(plant)) as store:
        return [(c.name, c.serial) for c in store.clients()]


def test_fail_add_client_into_another_clients_credential_needs_force(
    plant: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZTPKI_CLIENT_PASSPHRASE", "client-passphrase-1")
    out = tmp_path / "cred"

    def add(name: str, *extra: str) -> int:
        argv = ["ca", "add-client", "--dir", str(plant), "--name", name, "--out", str(out)]
        return main([*argv, "--ca", "root", *extra])

    out.mkdir()  # an empty directory is fine
    assert add("node-a") == 0
    first_cert = (out / "cert.pem").read_bytes()
    before = clients(plant)
    capsys.readouterr()
    assert add("node-x") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert str(out) in err and "--force" in err
    assert clients(plant) == before  # nothing registered or issued
    assert (out / "cert.pem").read_bytes() == first_cert
    assert add("node-x", "--force") == 0
    assert [name for name, _ in clients(plant)] == ["node-a", "node-x"]
    assert (out / "cert.pem").read_bytes() != first_cert


def test_fail_export_over_an_existing_file_needs_force(
    plant: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "chain.pem"
    out.write_text("someone else's chain\n")
    argv = ["ca", "export", "--dir", str(plant), "--name", "root", "--out", str(out)]
    assert main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert out.read_text() == "someone else's chain\n"
    assert main([*argv, "--force"]) == 0
    assert out.read_text().startswith("-----BEGIN CERTIFICATE-----")


# ------------------------------------------------------- usability: a port in use


def test_fail_serve_on_a_port_in_use_is_one_line_not_a_traceback(plant: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *(sys.executable, "-m", "ztpki", "ca", "serve", "--dir", str(plant)),
                *("--listen", f"127.0.0.1:{port}", "--key-workers", "1"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "ZTPKI_CA_PASSPHRASE": CA_PASSPHRASE},
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    err = " ".join(result.stderr.split())
    assert f"error: cannot listen on 127.0.0.1:{port}: address already in use" in err
    assert "listening on" not in result.stdout
