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
