"""A factory on loopback for the manufacturing end-to-end tests.

The CA-system directory is laid out as the demo does: `root` (self-signed), `factory`
(under root, default, profile device), `manifests` (under root, profile manifest-signer), and
the CA-client `line1`. `ztpki ca serve` runs as a real process; factory commands run
in-process through `ztpki.cli.main` (same code, no interpreter start-up) except where a test
wants the real command line.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.environment import environment
from tests.support.services import Service, run_ztpki, start

from ztpki.cli import main as ztpki_main

CA_PASSPHRASE = "factory-ca-passphrase"
CLIENT_PASSPHRASE = "line1-client-passphrase"
SIGNER_PASSPHRASE = "manifest-signer-passphrase"
EXPORT_PASSPHRASE = "export-passphrase-1"
ENV = {
    "ZTPKI_CA_PASSPHRASE": CA_PASSPHRASE,
    "ZTPKI_CLIENT_PASSPHRASE": CLIENT_PASSPHRASE,
    "ZTPKI_SIGNER_PASSPHRASE": SIGNER_PASSPHRASE,
    "ZTPKI_EXPORT_PASSPHRASE": EXPORT_PASSPHRASE,
}


@dataclass(frozen=True)
class CLIResult:
    status: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def cli(*args: str | Path, env: Mapping[str, str] | None = None) -> CLIResult:
    """One `ztpki` command in-process; returns its status and output."""
    out, err = io.StringIO(), io.StringIO()
    with (
        environment({**ENV, **(env or {})}),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        status = ztpki_main([str(a) for a in args])
    return CLIResult(status, out.getvalue(), err.getvalue())


def cli_ok(*args: str | Path) -> CLIResult:
    result = cli(*args)
    assert result.status == 0, f"ztpki {' '.join(map(str, args))}: {result.stdout}{result.stderr}"
    return result


def ztpki(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One `ztpki` command in its own process, as an operator runs it."""
    return run_ztpki(*(str(a) for a in args), env=ENV, check=check, timeout=120)


@dataclass
class Factory:
    """The factory CA system, its running service and the files the tests share."""

    root: Path
    system: Path
    line1: Path
    bundle: Path
    signer: Path
    service: Service

    @property
    def address(self) -> str:
        return self.service.address

    def ca_pem(self, name: str) -> Path:
        return self.system / "cas" / name / "ca.pem"

    def issued_count(self) -> int:
        """How many certificates `ztpki ca issued --json` lists."""
        return len(cli_ok("ca", "issued", "--dir", self.system, "--json").json())

    def ca_args(self) -> list[str | Path]:
        return ["--ca", self.address, "--client-cred", self.line1]


@contextlib.contextmanager
def running_factory(root: Path) -> Iterator[Factory]:
    system = root / "factory-ca"
    cli_ok("ca", "init", "--dir", system, "--name", "root", "--common-name", "Acme Root CA")
    cli_ok(
        "ca", "init", "--dir", system, "--name", "factory", "--parent", "root", "--default",
        "--profile", "device", "--org", "Acme Devices", "--country", "SE",
    )  # fmt: skip
    cli_ok(
        "ca", "init", "--dir", system, "--name", "manifests", "--parent", "root",
        "--profile", "manifest-signer", "--org", "Acme Devices",
    )  # fmt: skip
    cli_ok(
        "ca", "add-client", "--dir", system, "--name", "line1", "--out", root / "line1",
        "--ca", "factory", "--ca", "manifests",
    )  # fmt: skip
    bundle = root / "factory-bundle.pem"
    cli_ok("factory", "export-trust", "--dir", system, "--name", "factory", "--out", bundle)
    service = start(
        ["ca", "serve", "--dir", str(system), "--listen", "127.0.0.1:0"],
        log_path=root / "ca-serve.log",
        env=ENV,
    )
    try:
        signer = root / "signer"
        cli_ok(
            "factory", "signer", "--ca", service.address, "--client-cred", root / "line1",
            "--ca-name", "manifests", "--name", "line1-manifests", "--out", signer,
            "--trust", bundle,
        )  # fmt: skip
        yield Factory(root, system, root / "line1", bundle, signer, service)
    finally:
        service.stop()


def openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args))}: {result.stdout}{result.stderr}")
    return result
