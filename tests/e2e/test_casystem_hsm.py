"""A CA system whose CA keys live in a PKCS#11 token (SoftHSM2), served by the real
`ztpki ca serve`: certificates verify with openssl, pkcs11-tool shows the key object private,
sensitive and never extractable, no key file exists, and a token that goes away makes
requests fail as `unavailable` until it is back, without a restart."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest
from cryptography.x509 import ocsp
from cryptography.x509.oid import SignatureAlgorithmOID
from tests.e2e.casystem_fixtures import (
    CASystemUnderTest,
    chain_of,
    check_end_entity,
    cli_json,
    enroll_all,
    leaf_of,
    openssl_verify,
    ztpki,
)
from tests.support.ocsp import http_address, openssl_ocsp, post_ocsp, request_der, write_pem
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm  # noqa: F401

from ztpki.errors import ZtpkiError
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest


def _request(device: str | None = None) -> EnrollmentRequest:
    return EnrollmentRequest(
        f"req-{uuid.uuid4().hex[:12]}", device or f"dev-{uuid.uuid4().hex[:8]}"
    )


@pytest.fixture(scope="module")
def hsm_system(
    softhsm: SoftHSM,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CASystemUnderTest, str]]:
    base = tmp_path_factory.mktemp("hsm-casystem")
    logs = base / "logs"
    logs.mkdir()
    label = softhsm.new_token("ca")
    system = CASystemUnderTest(base / "plant", logs)
    env = softhsm.env
    system.init_ca("root", "--pkcs11", f"pkcs11:token={label};object=root", env=env)
    system.init_ca(
        "factory", "--parent", "root", "--default", "--key", "rsa-2048", "--rsa-pss",
        "--pkcs11", f"pkcs11:token={label};object=factory", env=env,
    )  # fmt: skip
    system.add_client("line1")
    try:
        system.start(env=env)
        yield system, label
    finally:
        system.stop()


def test_ok_token_ca_issues_and_openssl_verifies(
    hsm_system: tuple[CASystemUnderTest, str], tmp_path: Path
) -> None:
    system, _ = hsm_system
    request = _request()
    answer = system.enroll(request)
    leaf = leaf_of(answer)
    factory = system.ca_certificate("factory")
    check_end_entity(leaf, factory, device_id=request.device_id)
    chain = chain_of(answer)
    verified = openssl_verify(tmp_path, leaf, root=chain[-1], intermediates=chain[:-1])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert system.count() >= 1


def test_ok_concurrent_requests_share_the_token(hsm_system: tuple[CASystemUnderTest, str]) -> None:
    """Many requests in flight at once: every one signed by the token, none lost. (Negative
    control, run by hand: without tokens.pool's per-module call lock, SoftHSM, initialized
    without OS locking, takes the service down within these 400.)"""
    system, _ = hsm_system
    requests = [_request() for _ in range(400)]
    before = system.count()
    answers = asyncio.run(enroll_all(system, requests, pool_size=8))
    factory = system.ca_certificate("factory")
    for request, answer in zip(requests, answers, strict=True):
        assert isinstance(answer, EnrollmentAnswer), answer
        check_end_entity(leaf_of(answer), factory, device_id=request.device_id)
    assert system.count() == before + 400


def test_ok_ca_list_shows_where_each_key_lives(hsm_system: tuple[CASystemUnderTest, str]) -> None:
    system, label = hsm_system
    infos = {i["name"]: i for i in cli_json("ca", "list", "--dir", str(system.root))}
    assert infos["root"]["key_location"].startswith(f"pkcs11:token={label};object=root;id=")
    assert infos["factory"]["key_location"].startswith(f"pkcs11:token={label};object=factory;")
    assert USER_PIN not in str(infos)


def test_ok_pkcs11_tool_sees_a_sensitive_unextractable_key_and_no_key_file_exists(
    hsm_system: tuple[CASystemUnderTest, str],
    softhsm: SoftHSM,  # noqa: F811
) -> None:
    system, label = hsm_system
    listing = softhsm.private_keys(label)
    root_key = listing.split("label:      root")[1].split("Private Key Object")[0]
    assert "Access:     sensitive, always sensitive, never extractable, local" in root_key
    assert "Usage:      sign\n" in root_key  # no decrypt, unwrap or derive
    # Not even the user who holds the PIN can read the key's value out of the token.
    with softhsm.session(label) as session:
        key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label="root")
        assert key[pkcs11.Attribute.EXTRACTABLE] is False
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]
    for ca in ("root", "factory"):
        assert not (system.root / "cas" / ca / "ca.key.pem").exists()
    holding_keys = {
        path.relative_to(system.root)
        for path in system.root.rglob("*")
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes()
    }
    # Only the service CA (the TLS identity of the service and its clients) is a key file.
    assert holding_keys == {Path("service/ca.key.pem")}


def test_fail_wrong_pin_does_not_start_and_says_why(
    hsm_system: tuple[CASystemUnderTest, str],
    softhsm: SoftHSM,  # noqa: F811
) -> None:
    system, _ = hsm_system
    result = ztpki(
        "ca", "serve", "--dir", str(system.root), "--listen", "127.0.0.1:0",
        env={**softhsm.env, "ZTPKI_PKCS11_PIN": "not-the-pin-4711"}, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "the PIN for token" in result.stderr
    assert "not-the-pin-4711" not in result.stderr + result.stdout


def test_fail_token_away_then_back_without_restart(
    hsm_system: tuple[CASystemUnderTest, str],
    softhsm: SoftHSM,  # noqa: F811
) -> None:
    system, label = hsm_system
    system.enroll(_request())  # the service's sessions are open and warm
    before = system.count()
    where = softhsm.token_dir(label)
    away = where.with_name(where.name + ".away")
    os.rename(where, away)
    try:
        with pytest.raises(ZtpkiError) as refused:
            system.enroll(_request())
        assert refused.value.code == "unavailable", refused.value.message
        assert system.count() == before  # nothing issued, nothing recorded
    finally:
        os.rename(away, where)
    request = _request()
    answer = system.enroll(request)
    check_end_entity(leaf_of(answer), system.ca_certificate("factory"), device_id=request.device_id)
    assert system.count() == before + 1


@pytest.mark.parametrize("signer", ["ca", "delegated"], ids=["ok-ca-signs", "ok-delegated"])
def test_ok_ocsp_answers_of_a_token_ca_verify_with_openssl(
    hsm_system: tuple[CASystemUnderTest, str],
    softhsm: SoftHSM,  # noqa: F811
    tmp_path: Path,
    signer: str,
) -> None:
    """`--ocsp-signer ca`: the token signs every OCSP answer (RSASSA-PSS here); by default a
    delegated responder signs them, its certificate signed by the token. openssl verifies
    both against the CA chain."""
    system, _ = hsm_system
    request = _request()
    leaf = leaf_of(system.enroll(request))
    second = CASystemUnderTest(system.root, tmp_path)  # another instance on the same CA dir
    extra = ("--ocsp-signer", "ca") if signer == "ca" else ()
    service = second.start(
        "--http-listen", "127.0.0.1:0", "--key-workers", "1", *extra, env=softhsm.env
    )  # fmt: skip
    try:
        http = http_address(service)
        factory = system.ca_certificate("factory")
        answer = post_ocsp(http, request_der(leaf, factory)).ocsp()
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        assert (answer.certificates == []) is (signer == "ca")
        if signer == "ca":  # the factory CA's RSA key in the token signs with PSS
            assert answer.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
        chain = write_pem(tmp_path / "chain.pem", factory, system.ca_certificate("root"))
        done = openssl_ocsp(
            "-issuer", system.ca_pem("factory"), "-cert", write_pem(tmp_path / "leaf.pem", leaf),
            "-url", f"http://{http[0]}:{http[1]}/ocsp", "-CAfile", chain,
        )  # fmt: skip
        assert "Response verify OK" in done.stderr + done.stdout, done
        assert ": good" in done.stdout
    finally:
        second.stop()
