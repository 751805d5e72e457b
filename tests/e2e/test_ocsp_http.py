"""The revocation publisher of `ztpki ca serve --http-listen`, asked by real clients.

`openssl ocsp` (POST, nonces, -CAfile / -VAfile verification of the delegated responder),
curl (RFC 5019 GET of a request made with `openssl ocsp -reqout`, the CRL URL) and
`openssl crl` against a CA system whose certificates were issued, and revoked, over the XML
protocol by the CA-client that obtained them. Each positive case has its negative control
(a revoked certificate is not good, a foreign issuer is unauthorized, an unknown CA has no
CRL).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from tests.e2e.casystem_fixtures import (
    CA_PASSPHRASE,
    CASystemUnderTest,
    enroll_all,
    leaf_of,
    ztpki,
)
from tests.support.ocsp import (
    exchange,
    http_address,
    openssl_ocsp,
    post_ocsp,
    request_der,
    write_pem,
)
from tests.support.shell import sh

from ztpki.casystem.client import CAClient
from ztpki.casystem.directory import CASystemDirectory
from ztpki.pki.authority import IssuanceGrant
from ztpki.pki.keys import KeySpec, generate_private_key, key_spec_of
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import serial_hex
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest
from ztpki.protocol.revocation import RevocationRequest
from ztpki.store.records import RevocationReason

pytestmark = pytest.mark.timeout(300)

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


@dataclass
class Publisher:
    system: CASystemUnderTest
    http: tuple[str, int]
    work: Path

    @property
    def url(self) -> str:
        return f"http://{self.http[0]}:{self.http[1]}/ocsp"

    def issue(self, count: int = 1, *, ca: str = "factory") -> list[x509.Certificate]:
        requests = [EnrollmentRequest(new_id("req"), new_id("dev"), ca=ca) for _ in range(count)]
        answers = asyncio.run(enroll_all(self.system, requests))
        leaves = []
        for answer in answers:
            assert isinstance(answer, EnrollmentAnswer), answer
            leaves.append(leaf_of(answer))
        return leaves

    def revoke(self, leaf: x509.Certificate, reason: str, *, ca: str = "factory") -> None:
        """Revoke over the XML protocol, as the CA-client that obtained the certificate."""

        async def run() -> None:
            client = CAClient(self.system.address, self.system.credential("line1"))
            try:
                request = RevocationRequest(
                    new_id("rev"), ca, serial_hex(leaf), None, RevocationReason(reason)
                )
                await client.revoke(request)
            finally:
                await client.close()

        asyncio.run(run())

    def pem(self, leaf: x509.Certificate) -> Path:
        return write_pem(self.work / f"leaf-{serial_hex(leaf)[:16]}.pem", leaf)

    def ca_pem(self, ca: str = "factory") -> Path:
        return self.system.ca_pem(ca)

    def ask(
        self, leaf: x509.Certificate, *extra: str | Path, ca: str = "factory", digest: str = "sha1"
    ) -> str:
        """`openssl ocsp` for one certificate, verified against the CA; stdout + stderr."""
        done = openssl_ocsp(
            f"-{digest}", "-issuer", self.ca_pem(ca), "-cert", self.pem(leaf), "-url", self.url,
            "-CAfile", self.ca_pem(ca), *extra,
        )  # fmt: skip
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Publisher]:
    base = tmp_path_factory.mktemp("ocsp")
    logs = base / "logs"
    logs.mkdir()
    system = CASystemUnderTest(base / "system", logs)
    system.init_ca("factory", "--default")
    system.init_ca("rsaca", "--key", "rsa-2048")
    # This CA's CRLs, and so its OCSP answers, are valid for 2 hours.
    policy = system.root / "cas" / "rsaca" / "policy.toml"
    text = policy.read_text()
    assert "crl_next_update_hours = 24" in text
    policy.write_text(text.replace("crl_next_update_hours = 24", "crl_next_update_hours = 2"))
    system.add_client("line1")
    service = system.start("--http-listen", "127.0.0.1:0", "--key-workers", "1")
    try:
        yield Publisher(system, http_address(service), base)
    finally:
        system.stop()


def test_ok_good_then_revoked_with_reason_and_time(publisher: Publisher) -> None:
    leaf, other = publisher.issue(2)
    answer = publisher.ask(leaf)
    assert "Response verify OK" in answer and f"{publisher.pem(leaf)}: good" in answer
    before = datetime.now(UTC).replace(microsecond=0)
    publisher.revoke(leaf, "keyCompromise")
    answer = publisher.ask(leaf)
    assert "Response verify OK" in answer, answer
    assert f"{publisher.pem(leaf)}: revoked" in answer
    assert "Reason: keyCompromise" in answer
    found = re.search(r"Revocation Time: (.+ GMT)", answer)
    assert found, answer
    revoked_at = datetime.strptime(found.group(1), "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= revoked_at <= datetime.now(UTC)
    # Negative control: the certificate beside it is still good.
    assert f"{publisher.pem(other)}: good" in publisher.ask(other)


def test_ok_operator_hold_and_release_seen_at_once(publisher: Publisher) -> None:
    """`ztpki ca revoke` / `release-hold` in their own processes: the running responder's
    cached answer follows each change on the next query."""
    (leaf,) = publisher.issue()
    root = str(publisher.system.root)
    assert f"{publisher.pem(leaf)}: good" in publisher.ask(leaf, "-no_nonce")
    ztpki("ca", "revoke", "--dir", root, "--name", "factory", "--serial", serial_hex(leaf),
          "--reason", "certificateHold")  # fmt: skip
    held = publisher.ask(leaf, "-no_nonce")
    assert ": revoked" in held and "Reason: certificateHold" in held, held
    ztpki("ca", "release-hold", "--dir", root, "--name", "factory", "--serial", serial_hex(leaf))
    released = publisher.ask(leaf, "-no_nonce")
    assert "Response verify OK" in released and f"{publisher.pem(leaf)}: good" in released


def test_ok_rsa_ca_and_sha256_cert_ids(publisher: Publisher) -> None:
    (leaf,) = publisher.issue(ca="rsaca")
    answer = publisher.ask(leaf, ca="rsaca", digest="sha256")
    assert "Response verify OK" in answer and ": good" in answer, answer
    issuer = publisher.system.ca_certificate("rsaca")
    parsed = post_ocsp(publisher.http, request_der(leaf, issuer)).ocsp()
    assert parsed.next_update_utc - parsed.this_update_utc == timedelta(hours=2)
    # The RSA CA's delegated responder signs with a key of the CA's own algorithm and size.
    (responder,) = parsed.certificates
    assert key_spec_of(responder.public_key()) is key_spec_of(issuer.public_key())
    assert key_spec_of(issuer.public_key()).is_rsa
    factory = post_ocsp(
        publisher.http,
        request_der(publisher.issue()[0], publisher.system.ca_certificate("factory")),
    ).ocsp()
    assert factory.next_update_utc - factory.this_update_utc == timedelta(hours=24)
    publisher.revoke(leaf, "superseded", ca="rsaca")
    answer = publisher.ask(leaf, ca="rsaca")
    assert ": revoked" in answer and "Reason: superseded" in answer, answer


def test_ok_unknown_for_a_certificate_the_ca_never_recorded(publisher: Publisher) -> None:
    authority = CASystemDirectory(publisher.system.root).load_authority(
        "factory", passphrase=CA_PASSPHRASE.encode()
    )
    now = datetime.now(UTC)
    grant = IssuanceGrant(
        subject=build_subject("never-recorded", SubjectFields(), serial_number=None),
        profile=CertificateProfile.DEVICE,
        not_before=now,
        not_after=now + timedelta(days=1),
    )
    stray = authority.issue(generate_private_key(KeySpec.EC_P256).public_key(), grant)
    answer = publisher.ask(stray)
    assert "Response verify OK" in answer and ": unknown" in answer, answer


def test_fail_foreign_issuer_is_unauthorized(publisher: Publisher, tmp_path: Path) -> None:
    stranger = CASystemUnderTest(tmp_path / "stranger", tmp_path)
    stranger.init_ca("factory")  # same CA name, another key
    key = generate_private_key(KeySpec.EC_P256)
    authority = CASystemDirectory(stranger.root).load_authority(
        "factory", passphrase=CA_PASSPHRASE.encode()
    )
    now = datetime.now(UTC)
    grant = IssuanceGrant(
        subject=build_subject("stranger", SubjectFields(), serial_number=None),
        profile=CertificateProfile.DEVICE,
        not_before=now,
        not_after=now + timedelta(days=1),
    )
    leaf = authority.issue(key.public_key(), grant)
    done = openssl_ocsp(
        "-issuer", stranger.ca_pem("factory"), "-cert", write_pem(tmp_path / "l.pem", leaf),
        "-url", publisher.url,
    )  # fmt: skip
    assert "Responder Error: unauthorized" in done.stdout + done.stderr, done


def test_ok_nonce_echoed_and_no_nonce_answers_are_pre_signed(publisher: Publisher) -> None:
    (leaf,) = publisher.issue()
    with_nonce = publisher.ask(leaf, "-nonce", "-resp_text")
    assert "Response verify OK" in with_nonce and ": good" in with_nonce
    assert "WARNING: no nonce in response" not in with_nonce
    assert "OCSP Nonce" in with_nonce
    without = publisher.ask(leaf, "-no_nonce", "-resp_text")
    assert "Response verify OK" in without and "OCSP Nonce" not in without
    issuer = publisher.system.ca_certificate("factory")
    first = post_ocsp(publisher.http, request_der(leaf, issuer))
    second = post_ocsp(publisher.http, request_der(leaf, issuer))
    assert first.body == second.body  # the same pre-signed answer
    assert re.fullmatch(r"max-age=\d+, public, no-transform, must-revalidate",
                        first.headers["cache-control"])  # fmt: skip
    age = int(first.headers["cache-control"].split("=")[1].split(",")[0])
    assert 0 < age <= 24 * 3600
    nonced = [post_ocsp(publisher.http, request_der(leaf, issuer, nonce=os.urandom(16)))
              for _ in range(2)]  # fmt: skip
    assert nonced[0].body != nonced[1].body
    assert all(a.headers["cache-control"] == "no-store" for a in nonced)


def test_ok_cached_answer_changes_when_the_status_does(publisher: Publisher) -> None:
    (leaf,) = publisher.issue()
    issuer = publisher.system.ca_certificate("factory")
    assert post_ocsp(publisher.http, request_der(leaf, issuer)).ocsp().certificate_status is (
        ocsp.OCSPCertStatus.GOOD
    )
    publisher.revoke(leaf, "cessationOfOperation")
    answer = post_ocsp(publisher.http, request_der(leaf, issuer)).ocsp()
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason is x509.ReasonFlags.cessation_of_operation


def test_ok_get_rfc5019_with_curl(publisher: Publisher) -> None:
    (leaf,) = publisher.issue()
    work = publisher.work
    req = work / f"req-{serial_hex(leaf)[:12]}.der"
    done = openssl_ocsp(
        "-issuer", publisher.ca_pem(), "-cert", publisher.pem(leaf), "-no_nonce", "-reqout", req
    )
    assert done.returncode == 0, done.stderr
    escaped = urllib.parse.quote(base64.b64encode(req.read_bytes()).decode(), safe="")
    url = f"{publisher.url}/{escaped}"
    resp = work / "resp.der"
    headers = sh(f"curl -sS -D - -o {resp} '{url}'", work).stdout
    assert re.search(r"(?i)^content-type: application/ocsp-response", headers, re.M), headers
    assert re.search(r"(?i)^cache-control: max-age=\d+", headers, re.M), headers
    check = openssl_ocsp(
        "-respin", resp, "-issuer", publisher.ca_pem(), "-cert", publisher.pem(leaf),
        "-CAfile", publisher.ca_pem(),
    )  # fmt: skip
    assert "Response verify OK" in check.stderr + check.stdout and ": good" in check.stdout
    # Clients that do not escape the path: '+', '/' and '=' of base64 as they are.
    issuer = publisher.system.ca_certificate("factory")
    while True:
        nonce = os.urandom(16)
        raw = base64.b64encode(request_der(leaf, issuer, nonce=nonce)).decode()
        if "+" in raw and "/" in raw:
            break
    plain = exchange(publisher.http, "GET", f"/ocsp/{raw}").ocsp()
    assert plain.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert plain.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    # Negative control: the same path with its base64 broken is a malformedRequest.
    bad = exchange(publisher.http, "GET", "/ocsp/" + escaped[:-6] + "%21%21")
    assert bad.ocsp().response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_ok_delegated_responder_verified_with_vafile(publisher: Publisher) -> None:
    (leaf,) = publisher.issue()
    issuer = publisher.system.ca_certificate("factory")
    answer = post_ocsp(publisher.http, request_der(leaf, issuer)).ocsp()
    (responder,) = answer.certificates
    assert responder.issuer == issuer.subject
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert responder.not_valid_after_utc - responder.not_valid_before_utc <= timedelta(
        days=7, minutes=5
    )
    va = write_pem(publisher.work / "responder.pem", responder)
    done = openssl_ocsp(
        "-issuer", publisher.ca_pem(), "-cert", publisher.pem(leaf), "-url", publisher.url,
        "-VAfile", va,
    )  # fmt: skip
    assert "Response verify OK" in done.stderr + done.stdout and ": good" in done.stdout
    # Negative control: trusting another CA's responder certificate fails verification.
    (other,) = publisher.issue(ca="rsaca")
    other_answer = post_ocsp(
        publisher.http, request_der(other, publisher.system.ca_certificate("rsaca"))
    ).ocsp()
    wrong = write_pem(publisher.work / "wrong.pem", other_answer.certificates[0])
    done = openssl_ocsp(
        "-issuer", publisher.ca_pem(), "-cert", publisher.pem(leaf), "-url", publisher.url,
        "-VAfile", wrong,
    )  # fmt: skip
    assert "Response Verify Failure" in done.stderr + done.stdout, done


def test_ok_ca_signed_answers(publisher: Publisher, tmp_path: Path) -> None:
    """--ocsp-signer ca: the CA key signs; no responder certificate in the answer."""
    (leaf,) = publisher.issue()
    system = CASystemUnderTest(publisher.system.root, tmp_path)
    service = system.start(
        "--http-listen", "127.0.0.1:0", "--ocsp-signer", "ca", "--key-workers", "1"
    )
    try:
        http = http_address(service)
        answer = post_ocsp(http, request_der(leaf, system.ca_certificate("factory"))).ocsp()
        assert answer.certificates == []
        assert (
            answer.responder_key_hash
            == x509.SubjectKeyIdentifier.from_public_key(
                system.ca_certificate("factory").public_key()
            ).digest
        )
        done = openssl_ocsp(
            "-issuer", publisher.ca_pem(), "-cert", publisher.pem(leaf),
            "-url", f"http://{http[0]}:{http[1]}/ocsp", "-CAfile", publisher.ca_pem(),
        )  # fmt: skip
        assert "Response verify OK" in done.stderr + done.stdout and ": good" in done.stdout
    finally:
        system.stop()


def test_ok_crl_served_as_written(publisher: Publisher) -> None:
    (leaf,) = publisher.issue()
    publisher.revoke(leaf, "privilegeWithdrawn")
    crl_file = publisher.system.root / "cas" / "factory" / "crl.der"
    url = f"http://{publisher.http[0]}:{publisher.http[1]}/crl/factory.crl"
    out = publisher.work / "factory.crl"
    headers = sh(f"curl -sS -D - -o {out} {url}", publisher.work).stdout
    assert re.search(r"(?i)^content-type: application/pkix-crl", headers, re.M), headers
    assert out.read_bytes() == crl_file.read_bytes()
    text = sh(f"openssl crl -inform DER -in {out} -noout -text", publisher.work).stdout
    assert format(leaf.serial_number, "X") in text.replace(":", "").upper()
    assert "Privilege Withdrawn" in text
    # The publisher reads the file again once the CA system replaced it.
    (second,) = publisher.issue()
    publisher.revoke(second, "affiliationChanged")
    again = exchange(publisher.http, "GET", "/crl/factory.crl").body
    assert again == crl_file.read_bytes() != out.read_bytes()
    assert x509.load_der_x509_crl(again).get_revoked_certificate_by_serial_number(
        second.serial_number
    )
    # Negative controls: a CA the system does not hold, and a path that tries to leave cas/.
    assert exchange(publisher.http, "GET", "/crl/nosuch.crl").status == 404
    assert exchange(publisher.http, "GET", "/crl/..%2F..%2Fstore.sqlite.crl").status == 404


def test_ok_200_concurrent_queries_while_revoking(publisher: Publisher) -> None:
    leaves = publisher.issue(20)
    issuer = publisher.system.ca_certificate("factory")
    doomed = leaves[:10]

    async def query(session: aiohttp.ClientSession, leaf: x509.Certificate, n: int) -> bytes:
        nonce = os.urandom(16) if n % 2 else None
        async with session.post(
            publisher.url,
            data=request_der(leaf, issuer, nonce=nonce),
            headers={"Content-Type": "application/ocsp-request"},
        ) as response:
            assert response.status == 200
            return await response.read()

    async def revoke_all() -> None:
        # In parallel too, over one CA-client's pool of connections.
        system = publisher.system
        client = CAClient(system.address, system.credential("line1"), pool_size=4)
        reason = RevocationReason.KEY_COMPROMISE
        requests = [
            RevocationRequest(new_id("rev"), "factory", serial_hex(leaf), None, reason)
            for leaf in doomed
        ]
        try:
            await asyncio.gather(*(client.revoke(request) for request in requests))
        finally:
            await client.close()

    async def run() -> list[bytes]:
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as session:
            queries = [query(session, leaves[n % 20], n) for n in range(200)]
            results = await asyncio.gather(revoke_all(), *queries)
        return list(results[1:])

    for body in asyncio.run(run()):
        answer = ocsp.load_der_ocsp_response(body)
        assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status in (ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED)
        if answer.serial_number not in {leaf.serial_number for leaf in doomed}:
            assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    # Once every revocation is acknowledged, every answer says so, cached or not.
    for n, leaf in enumerate(leaves):
        answer = post_ocsp(publisher.http, request_der(leaf, issuer)).ocsp()
        expected = ocsp.OCSPCertStatus.REVOKED if n < 10 else ocsp.OCSPCertStatus.GOOD
        assert answer.certificate_status is expected, n


def test_fail_http_port_in_use_is_one_line_and_nothing_listens(publisher: Publisher) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = ztpki(
            "ca", "serve", "--dir", str(publisher.system.root), "--listen", "127.0.0.1:0",
            "--http-listen", f"127.0.0.1:{port}", "--key-workers", "1", check=False,
        )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    err = " ".join(result.stderr.split())
    assert f"error: cannot listen on 127.0.0.1:{port}: address already in use" in err
    assert "listening on" not in result.stdout


def test_fail_ocsp_signer_without_http_listen(publisher: Publisher) -> None:
    result = ztpki(
        "ca", "serve", "--dir", str(publisher.system.root), "--ocsp-signer", "ca", check=False
    )
    assert result.returncode == 2 and "--ocsp-signer needs --http-listen" in result.stderr
    assert "listening on" not in result.stdout
