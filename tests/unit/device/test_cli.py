"""The device commands' surface: usage errors, plain-text messages, remedies, --force."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.e2e.device_fixtures import tls_service
from tests.unit.device.fake_node import Pki, issue

from ztpki.cli import cli
from ztpki.cli.device_agent import _fail
from ztpki.device.activation import NODE_CA_KEY
from ztpki.device.communication import NodeAddress
from ztpki.device.reporting import (
    EXIT_REFUSED,
    ActivationError,
    Step,
    confirm_remedy,
    connect_remedy,
    refusal_remedy,
    request_remedy,
)
from ztpki.errors import (
    ConfigurationError,
    NotAuthenticated,
    NotAuthorized,
    Unavailable,
    VerificationFailed,
)
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.profiles import CertificateProfile

HEX64 = "ab" * 31 + "0f"
NODE = "https://127.0.0.1:28443"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


# -- 1. messages with brackets are printed as they are ------------------------------------


def test_fail_404_message_with_brackets_is_printed_plain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cause = ConfigurationError(
        f"the node has no simpleenroll at {NODE}/nolabel (404): [/label] unknown-label"
    )
    error = ActivationError(Step.REQUEST, cause)
    assert "https://HOST:PORT[/label]" in error.message
    with pytest.raises(SystemExit) as exited:
        _fail(error)
    assert exited.value.code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "error: step request failed" in err
    assert "(https://HOST:PORT[/label])" in err and "[/label] unknown-label" in err


def test_fail_refusal_keeps_its_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _fail(ActivationError(Step.REQUEST, NotAuthorized("node refused [bold]x[/]")))
    assert exited.value.code == EXIT_REFUSED
    assert "node refused [bold]x[/]" in " ".join(capsys.readouterr().err.split())


def test_fail_device_error_with_brackets_in_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "dev[/label]x"
    result = run("device", "activate", "--device", str(missing), "--node", f"{NODE}/x")
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"{missing}cannotbeopened" in "".join(result.stderr.split())


# -- 2. and 4. option values that do not parse are usage errors -----------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--node", "http://127.0.0.1:28443"], "--node"),
        (["--node", "127.0.0.1:28443"], "--node"),
        (["--node", "https://127.0.0.1:99999"], "--node"),
        (["--node", NODE, "--node-ca-fingerprint", "1234"], "--node-ca-fingerprint"),
        (["--node", NODE, "--node-ca-fingerprint", f"sha1:{HEX64}"], "--node-ca-fingerprint"),
        (["--node", NODE, "--key-on-device", "--key-algorithm", "foo"], "--key-algorithm"),
        (["--node", NODE, "--key-algorithm", "ec-p256"], "--key-on-device"),
    ],
    ids=["http", "no-scheme", "bad-port", "short-pin", "sha1-pin", "bad-algorithm", "no-kod"],
)
def test_fail_activate_bad_option_is_a_usage_error(
    tmp_path: Path, extra: list[str], named: str
) -> None:
    result = run("device", "activate", "--device", str(tmp_path / "none"), *extra)
    assert result.exit_code == 2, result.output
    assert named in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["device", "renew", "--node", "http://x:1"],
        ["device", "renew", "--node-ca-fingerprint", "1234"],
        ["device", "agent", "--node", "127.0.0.1:28443"],
        ["device", "agent", "--node-ca-fingerprint", "zz"],
        ["device", "set-node", "127.0.0.1:28443"],
        ["device", "set-node", NODE, "--node-ca-fingerprint", "1234"],
        ["device", "connect", "http://service.example/"],
    ],
)
def test_fail_other_commands_bad_value_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    result = run(*args, "--device", str(tmp_path / "none"))
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.stderr


def test_ok_key_algorithm_choices_are_the_key_specs() -> None:
    result = run("device", "activate", "--help")
    flat = " ".join(result.output.split())
    assert result.exit_code == 0
    for spec in KeySpec:
        assert spec.value in flat
    assert "onlywith--key-on-device" in "".join(flat.split())


def test_ok_renew_help_explains_every_option() -> None:
    result = run("device", "renew", "--help")
    flat = " ".join(result.output.split())
    assert "--timeout FLOAT Seconds per request." in flat
    assert "--json Print the result as JSON" in flat


# -- 3. fingerprint forms ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        f"sha256:{HEX64}",
        HEX64.upper(),
        ":".join(HEX64[i : i + 2] for i in range(0, 64, 2)).upper(),
        "SHA256:" + ":".join(HEX64[i : i + 2] for i in range(0, 64, 2)),
    ],
    ids=["prefixed", "bare", "openssl-colons", "prefixed-colons"],
)
def test_ok_set_node_normalises_the_fingerprint(pki: Pki, tmp_path: Path, given: str) -> None:
    memory = pki.manufacture(tmp_path / "dev", "ACME-0001")
    result = run(
        "device", "set-node", "--device", str(memory.path), NODE, "--node-ca-fingerprint", given
    )
    assert result.exit_code == 0, result.output
    assert memory.config()[NODE_CA_KEY] == f"sha256:{HEX64}"
    assert f"sha256:{HEX64}" in result.output


# -- 5. remedies -----------------------------------------------------------------------------


BLOCKED = NotAuthorized(
    "node refused simpleenroll (403): device ACME-0001 is blocked in the customer register"
)
UNKNOWN = NotAuthorized(
    "node refused serverkeygen (403): device ACME-0001 is not in the customer register"
)
CUSTOMIZED = NotAuthorized(
    "node refused serverkeygen (403): device ACME-0001 is already customized: its temporary "
    "certificate is no longer accepted; use the operational certificate"
)


def test_ok_refusal_remedies_name_the_fix() -> None:
    blocked, unknown, customized = (refusal_remedy(e) for e in (BLOCKED, UNKNOWN, CUSTOMIZED))
    assert blocked is not None and "ztpki node unblock" in blocked
    assert unknown is not None and "ztpki node add" in unknown and "unblock" not in unknown
    assert customized is not None and "operational identity" in customized
    assert "ztpki node" not in customized.split(";")[0]
    assert len({blocked, unknown, customized}) == 3
    assert refusal_remedy(NotAuthorized("node refused serverkeygen (403): go away")) is None
    assert refusal_remedy(Unavailable("later")) is None


def test_ok_request_and_confirm_remedies_use_the_refusal() -> None:
    node = NodeAddress.parse(NODE)
    for renewing in (False, True):
        assert "ztpki node unblock" in (request_remedy(BLOCKED, renewing=renewing) or "")
    assert "ztpki node add" in (request_remedy(UNKNOWN, renewing=False) or "")
    assert "ztpki node unblock" in (confirm_remedy(BLOCKED, node) or "")
    assert "superseded" in (confirm_remedy(NotAuthorized("not live"), node) or "")
    # Through ActivationError, as any step reports it.
    assert "ztpki node unblock" in ActivationError(Step.CACERTS, BLOCKED).message
    generic = ActivationError(Step.REQUEST, NotAuthorized("node refused (403): no")).remedy
    assert "ztpki node add" in generic and "ztpki node unblock" in generic


def test_ok_connect_remedies() -> None:
    unverified = connect_remedy(VerificationFailed("cannot verify"))
    assert unverified is not None and "--trust FILE" in unverified
    none = connect_remedy(ConfigurationError("no CA certificate to verify the server with"))
    assert none is not None and "--trust FILE" in none
    assert connect_remedy(NotAuthenticated("refused")) is not None
    assert connect_remedy(Unavailable("later")) is None


def test_fail_connect_to_an_unverifiable_server_says_give_trust(pki: Pki, tmp_path: Path) -> None:
    memory = pki.manufacture(tmp_path / "dev", "ACME-0001")
    key = generate_private_key(KeySpec.EC_P256)
    cert = issue(
        pki.customer, key.public_key(), "service", profile=CertificateProfile.SERVER, ip="127.0.0.1"
    )
    with tls_service(key, [cert, pki.customer.certificate], [pki.factory.certificate]) as url:
        result = run("device", "connect", "--device", str(memory.path), "--timeout", "10", url)
    assert result.exit_code == 1, result.output
    flat = " ".join(result.stderr.split())
    assert "cannot verify" in flat
    assert "What to do: give the server's CA certificate with --trust FILE" in flat


# -- 6. export --out -------------------------------------------------------------------------


def test_fail_export_refuses_a_non_empty_out_without_force(pki: Pki, tmp_path: Path) -> None:
    memory = pki.manufacture(tmp_path / "dev", "ACME-0001")
    out = tmp_path / "out"
    out.mkdir()
    (out / "key.pem").write_text("another client's key\n")
    args = ["device", "export", "--device", str(memory.path), "--out", str(out)]
    refused = run(*args, "--insecure-no-passphrase")
    assert refused.exit_code == 1, refused.output
    assert "--force" in refused.stderr
    assert (out / "key.pem").read_text() == "another client's key\n"
    forced = run(*args, "--insecure-no-passphrase", "--force")
    assert forced.exit_code == 0, forced.output
    assert "PRIVATE KEY" in (out / "key.pem").read_text()


def test_ok_export_into_a_new_or_empty_out(pki: Pki, tmp_path: Path) -> None:
    memory = pki.manufacture(tmp_path / "dev", "ACME-0001")
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new[/x]", empty):
        result = run(
            "device", "export", "--device", str(memory.path), "--out", str(out),
            "--insecure-no-passphrase",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert (out / "cert.pem").exists()
        assert str(out / "cert.pem") in result.output
