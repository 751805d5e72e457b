"""Relying parties check a server's revocation: `ztpki device connect` and curl --crlfile.

A CA system (`ca serve --http-listen`, publishing CRLs and OCSP) whose "web" CA names its CRL
and OCSP URLs in the certificates it issues (policy [revocation]); a TLS service on loopback
with a "web" certificate; a device made by `factory manufacture` from the same CA system's
"devices" CA. The operator revokes the service's certificate with `ztpki ca revoke`: the
device refuses the service from then on, and so does curl given the CA's CRL.
"""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.e2e.casystem_fixtures import CASystemUnderTest
from tests.e2e.node_fixtures import NODE_PASSPHRASE
from tests.e2e.node_fixtures import ztpki as run
from tests.support.ocsp import http_address

from ztpki.credentials import server_context
from ztpki.pki.keys import decode_pkcs8
from ztpki.pki.pem import load_certificates_pem, serial_hex
from ztpki.pki.revocation_check import crl_urls, load_crl, ocsp_urls

pytestmark = pytest.mark.timeout(300)

CURL = shutil.which("curl")


@dataclass
class Setting:
    system: CASystemUnderTest
    url: str  # the TLS service
    device: Path
    server: Path  # cert.pem, key.pem, ca.pem of the service
    root_pem: Path
    crl_url: str
    ocsp_service: str  # a TLS service whose certificate names an OCSP responder only
    ocsp_server: Path


def _serve_tls(cert: Path, key: Path, client_anchor: Path) -> tuple[str, http.server.HTTPServer]:
    chain = load_certificates_pem(cert.read_bytes())
    private = decode_pkcs8(key.read_bytes(), passphrase=NODE_PASSPHRASE.encode())
    anchors = load_certificates_pem(client_anchor.read_bytes())
    context = server_context(private, chain, client_anchors=anchors, require_client_cert=False)

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"https://127.0.0.1:{httpd.server_address[1]}/hello", httpd


def _name_urls(policy: Path, lines: str) -> None:
    """Put these lines in the [revocation] table of a CA's policy.toml."""
    policy.write_text(policy.read_text().replace("\n[revocation]\n", "\n[revocation]\n" + lines))


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setting]:
    base = tmp_path_factory.mktemp("relying")
    (base / "logs").mkdir()
    system = CASystemUnderTest(base / "system", base / "logs")
    system.init_ca("root")
    system.init_ca("devices", "--parent", "root", "--default")
    system.init_ca("web", "--parent", "root", "--profile", "server")
    system.init_ca("ocspweb", "--parent", "root", "--profile", "server")  # names OCSP only
    rights = ("--ca", "devices", "--ca", "web", "--ca", "ocspweb", "--ip", "127.0.0.1")
    client = system.add_client("svc", *rights)
    # Learn the publisher's port, then name it in the web CA's policy and serve there again.
    host, port = http_address(system.start("--http-listen", "127.0.0.1:0", "--key-workers", "1"))
    system.stop()
    crl_url = f"http://{host}:{port}/crl/web.crl"
    policy = system.root / "cas" / "web" / "policy.toml"
    links = f'crl_url = "{crl_url}"\nocsp_url = "http://{host}:{port}/ocsp"\n'
    policy.write_text(policy.read_text().replace("\n[revocation]\n", "\n[revocation]\n" + links))
    policy = system.root / "cas" / "ocspweb" / "policy.toml"
    ocsp_only = f'ocsp_url = "http://{host}:{port}/ocsp"\n'
    policy.write_text(
        policy.read_text().replace("\n[revocation]\n", "\n[revocation]\n" + ocsp_only)
    )
    system.start("--http-listen", f"{host}:{port}", "--key-workers", "1")
    servers: list[http.server.HTTPServer] = []
    try:
        address = f"{system.address[0]}:{system.address[1]}"
        server = base / "server"
        run(
            "node", "request-server-cert", "--ca", address, "--client-cred", str(client),
            "--ca-name", "web", "--ip", "127.0.0.1", "--out", str(server),
        )  # fmt: skip
        devices = base / "devices"
        run(
            "factory", "manufacture", "--ca", address, "--client-cred", str(client),
            "--count", "1", "--out", str(devices),
        )  # fmt: skip
        device = next(p for p in devices.iterdir() if p.is_dir() and not p.name.startswith("."))
        ocsp_server = base / "ocsp-server"
        run(
            "node", "request-server-cert", "--ca", address, "--client-cred", str(client),
            "--ca-name", "ocspweb", "--ip", "127.0.0.1", "--out", str(ocsp_server),
        )  # fmt: skip
        root_pem = system.ca_pem("root")
        url, httpd = _serve_tls(server / "cert.pem", server / "key.pem", root_pem)
        servers.append(httpd)
        ocsp_url, ocsp_httpd = _serve_tls(
            ocsp_server / "cert.pem", ocsp_server / "key.pem", root_pem
        )
        servers.append(ocsp_httpd)
        yield Setting(system, url, device, server, root_pem, crl_url, ocsp_url, ocsp_server)
    finally:
        for httpd in servers:
            httpd.shutdown()
        system.stop()


def connect(
    setting: Setting, *extra: str, ca: str = "web", url: str | None = None
) -> subprocess.CompletedProcess[str]:
    trust = str(setting.system.ca_pem(ca))
    return run(  # type: ignore[no-any-return]
        "device", "connect", "--device", str(setting.device), url or setting.url,
        "--trust", trust, *extra, check=False,
    )  # fmt: skip


def curl(setting: Setting, crl: Path) -> subprocess.CompletedProcess[str]:
    assert CURL is not None, "curl is needed for this test"
    chain = setting.server / "ca.pem"
    return subprocess.run(
        [CURL, "-sS", "--cacert", str(chain), "--crlfile", str(crl), setting.url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def crl_pem(setting: Setting, path: Path) -> Path:
    """The CRLs of the web CA and of the root above it, PEM (curl checks every level)."""
    pems = []
    for name in ("web", "root"):
        der = path.with_suffix(f".{name}.der")
        run("ca", "crl", "--dir", str(setting.system.root), "--name", name, "--out", str(der))
        pems.append(load_crl(der.read_bytes()).public_bytes(serialization.Encoding.PEM))
    path.write_bytes(b"".join(pems))
    return path


def test_fail_revoked_server_is_refused_by_device_connect_and_curl(
    setting: Setting, tmp_path: Path
) -> None:
    cert = load_certificates_pem((setting.server / "cert.pem").read_bytes())[0]
    assert crl_urls(cert) == (setting.crl_url,) and ocsp_urls(cert)
    # Before: the device and curl (checking the CRL) reach the service.
    before = connect(setting, "--require-revocation-check")
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith("200 OK") and "hello" in before.stdout
    good = curl(setting, crl_pem(setting, tmp_path / "before.pem"))
    assert good.returncode == 0 and good.stdout == "hello\n", good.stderr
    run(
        "ca", "revoke", "--dir", str(setting.system.root), "--name", "web",
        "--serial", serial_hex(cert), "--reason", "keyCompromise",
    )  # fmt: skip
    # After: refused, soft-fail or not (a revoked server is always refused).
    for extra in ((), ("--require-revocation-check",)):
        after = connect(setting, *extra)
        assert after.returncode == 1, after.stdout
        assert "revoked by its CA" in after.stderr and "keyCompromise" in after.stderr
        assert "200" not in after.stdout
    refused = curl(setting, crl_pem(setting, tmp_path / "after.pem"))
    assert refused.returncode == 60, (refused.returncode, refused.stderr)  # peer cert failed
    assert "revoked" in refused.stderr.lower()


def test_fail_server_revoked_at_the_ocsp_responder_is_refused(setting: Setting) -> None:
    cert = load_certificates_pem((setting.ocsp_server / "cert.pem").read_bytes())[0]
    assert crl_urls(cert) == () and ocsp_urls(cert)
    # ca serve's own responder (a delegated responder certificate) answers good, then revoked.
    before = connect(setting, "--require-revocation-check", ca="ocspweb", url=setting.ocsp_service)
    assert before.returncode == 0 and "hello" in before.stdout, before.stderr
    run(
        "ca", "revoke", "--dir", str(setting.system.root), "--name", "ocspweb",
        "--serial", serial_hex(cert), "--reason", "superseded",
    )  # fmt: skip
    after = connect(setting, ca="ocspweb", url=setting.ocsp_service)
    assert after.returncode == 1, after.stdout
    assert "revoked by its CA" in after.stderr and "superseded" in after.stderr


def test_ssl_error_type_is_a_verification_error() -> None:
    from ztpki.device.server_revocation import ServerRevocationError

    error = ServerRevocationError("revoked", revoked=True)
    assert isinstance(error, ssl.SSLCertVerificationError) and error.verify_code == 23
