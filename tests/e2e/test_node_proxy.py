"""The node behind a real TLS-terminating nginx: devices enroll with curl through the proxy.

Two nginx instances run deploy/nginx/ztpki-node.conf, the file operators deploy, with only
its placeholders filled in (tests/support/nginx.py: own prefix on 127.0.0.1, `daemon off;`,
a master and one worker). nginx verifies that the client holds the key of its certificate
(`ssl_verify_client optional_no_ca`: the node checks the chain itself) and forwards
`$ssl_client_escaped_cert` to one of the node's proxy listeners each:

* TLS: nginx authenticates itself with its own client certificate (a proxy CA made with
  openssl, `proxy_ssl_certificate`) and verifies the node (`proxy_ssl_verify on`), from
  127.0.0.1, the one trusted proxy address;
* a Unix socket the node creates 0660 for the group nginx's worker runs in.

A local process that reaches a proxy listener directly with a stolen device-certificate header
has neither nginx's certificate nor its group, and is refused before any HTTP.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from node_fixtures import Device, NodeWorld, build_world, cli, ztpki
from proxy_fixtures import (
    HEADER,
    OUTSIDE_PEER,
    OUTSIDER,
    PROXY_PEER,
    ProxiedWorld,
    start_front,
    start_proxied_node,
)
from tests.support.nginx import NGINX, WORKER_GROUP, stop_nginx
from tests.support.shell import sh

from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import load_certificates_pem

pytestmark = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed (apt-get install nginx-light); the proxy listener is "
    "still covered by tests/unit/node/test_node_proxy.py",
)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedWorld]:
    world = build_world(tmp_path_factory.mktemp("node-proxy"))
    # nginx's worker (nobody) must reach the socket: pytest's tmp is 0700 to other users.
    socket_dir = Path(tempfile.mkdtemp(prefix="ztpki-nginx-"))
    socket_dir.chmod(0o711)
    socket_path = socket_dir / "proxy.sock"
    fronts = []
    try:
        node, proxy_port, pki = start_proxied_node(world, socket_path)
        tls_hop = f"127.0.0.1:{proxy_port}"
        for name, hop in (("nginx-tls", tls_hop), ("nginx-unix", f"unix:{socket_path}")):
            fronts.append(start_front(world, world.root / name, hop, pki))
        (_, nginx_port), (_, unix_port) = fronts
        yield ProxiedWorld(world, node, proxy_port, socket_path, nginx_port, unix_port, pki)
    finally:
        for process, _ in fronts:
            stop_nginx(process)
        world.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


def escaped_pem(cert: x509.Certificate) -> str:
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")


def csr_script(device_id: str) -> str:
    return f"""
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out new.key
openssl req -new -key new.key -subj "/CN={device_id}/serialNumber={device_id}" -outform DER \\
  | base64 -w 64 > csr.b64
"""


def curl_enroll(url: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A simpleenroll POST of cwd/csr.b64 by curl; stdout is the HTTP status (000: none)."""
    args = " ".join(extra)
    return sh(
        f"curl -sS --max-time 30 -o answer.txt -w '%{{http_code}}' {args} "
        "-H 'Content-Type: application/pkcs10' -H 'Content-Transfer-Encoding: base64' "
        f"--data-binary @csr.b64 '{url}/simpleenroll'",
        cwd,
        check=False,
    )


def post_status(url: str, cwd: Path, *extra: str) -> str:
    """The HTTP status of a simpleenroll POST that got an HTTP answer."""
    result = curl_enroll(url, cwd, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def self_signed_as(device_id: str) -> x509.Certificate:
    key = generate_private_key(KeySpec.EC_P256)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, device_id),
        ]
    )
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )


def curl_refused(url: str, cwd: Path, *extra: str) -> str:
    """A simpleenroll POST that must fail before any HTTP answer: curl's exit code and error."""
    result = curl_enroll(url, cwd, *extra)
    assert result.returncode != 0, (result.stdout, (cwd / "answer.txt").read_text())
    assert result.stdout.strip() == "000", result.stdout  # no HTTP status at all
    return f"curl exit {result.returncode}: {result.stderr.strip()}"


def fresh_device(world: NodeWorld, cwd: Path) -> tuple[Device, int]:
    """A listed device, its CSR in cwd/csr.b64, and its audit trail's length."""
    (device,) = world.make_devices(1)
    sh(csr_script(device.device_id), cwd)
    return device, len(world.audit(device.device_id))


def assert_untouched(world: NodeWorld, device_id: str, audit_before: int) -> None:
    assert world.state(device_id) == "listed"
    assert len(world.audit(device_id)) == audit_before
    assert world.issued(device_id) == []


def test_ok_policy_shows_the_proxy(proxied: ProxiedWorld) -> None:
    out = cli("node", "policy", "--dir", str(proxied.world.node_dir))
    assert f"trusted proxies: {PROXY_PEER}/32 (header {HEADER})" in out
    assert "proxy authentication: TLS client certificate under CN=Example proxy CA" in out
    assert f"proxy Unix socket: mode 0660, group {WORKER_GROUP}" in out


@pytest.mark.parametrize("hop", ["tls", "unix"], ids=["ok-tls-hop", "ok-unix-socket-hop"])
def test_ok_cmp_ir_and_certconf_through_nginx(
    proxied: ProxiedWorld, tmp_path: Path, hop: str
) -> None:
    """openssl cmp through nginx, its TLS client certificate (forwarded in the header) the
    same as its CMP signer: the node sees one identity."""
    world = proxied.world
    (device,) = world.make_devices(1)
    port = proxied.nginx_port if hop == "tls" else proxied.nginx_unix_port
    script = f"""
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out new.key
openssl cmp -server 127.0.0.1:{port} -path .well-known/cmp -tls_used \\
  -tls_trusted {world.factory_anchor} -trusted {world.factory_anchor} \\
  -tls_cert {device.cert_path} -tls_key {device.key_path} \\
  -cmd ir -cert {device.cert_path} -key {device.key_path} -newkey new.key \\
  -subject "/CN={device.device_id}/serialNumber={device.device_id}" -certout new.pem
"""
    result = sh(script, tmp_path)
    assert "received PKICONF" in result.stdout + result.stderr
    assert world.state(device.device_id) == "customized"


@pytest.mark.parametrize("hop", ["tls", "unix"], ids=["ok-tls-hop", "ok-unix-socket-hop"])
def test_ok_enroll_and_confirm_through_nginx(
    proxied: ProxiedWorld, tmp_path: Path, hop: str
) -> None:
    world = proxied.world
    (device,) = world.make_devices(1)
    script = f"""
EST={proxied.est if hop == "tls" else proxied.est_unix}
CA={world.factory_anchor}
b64d() {{ tr -d '\\r\\n' | base64 -d; }}
curl -sS --fail-with-body --cacert "$CA" -o cacerts.b64 "$EST/cacerts"
b64d < cacerts.b64 | openssl pkcs7 -inform DER -print_certs -out cacerts.pem
{csr_script(device.device_id)}
curl -sS --fail-with-body --cacert "$CA" --cert {device.cert_path} --key {device.key_path} \\
  -H 'Content-Type: application/pkcs10' -H 'Content-Transfer-Encoding: base64' \\
  --data-binary @csr.b64 -o cert.p7.b64 "$EST/simpleenroll"
b64d < cert.p7.b64 | openssl pkcs7 -inform DER -print_certs -out new.pem
openssl verify -purpose sslclient -CAfile cacerts.pem new.pem
curl -sS --fail-with-body --cacert "$CA" --cert new.pem --key new.key -o /dev/null "$EST/cacerts"
"""
    result = sh(script, tmp_path)
    assert "new.pem: OK" in result.stdout
    assert world.state(device.device_id) == "customized"
    issued = load_certificates_pem((tmp_path / "new.pem").read_bytes())[0]
    assert issued.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == (
        device.device_id
    )
    # nginx's access log names the device that enrolled (what docs/deploy.md uses after a
    # restore), never its certificate. One worker: the enrollment was logged before it served
    # the confirming request.
    log = (world.root / f"nginx-{hop}" / "access.log").read_text()
    (line,) = [
        x
        for x in log.splitlines()
        if f"serialNumber={device.device_id}" in x and "simpleenroll" in x
    ]
    assert '"POST /.well-known/est/simpleenroll HTTP/1.1" 200' in line
    assert "BEGIN" not in log and "%2D%2D" not in log.upper()


def test_ok_serverkeygen_through_nginx_over_the_tls_hop(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    """The generated private key reaches the device through nginx; on the nginx-to-node hop it
    travels inside TLS (the attack suite records that hop and looks for it)."""
    world = proxied.world
    (device,) = world.make_devices(1)
    sh(csr_script(device.device_id), tmp_path)
    result = sh(
        f"curl -sS --fail-with-body --cacert {world.factory_anchor} --cert {device.cert_path} "
        f"--key {device.key_path} -H 'Content-Type: application/pkcs10' "
        "-H 'Content-Transfer-Encoding: base64' --data-binary @csr.b64 -o keygen.out "
        f"-w '%{{content_type}}' '{proxied.est}/serverkeygen'",
        tmp_path,
    )
    assert result.stdout.startswith("multipart/mixed"), result.stdout
    assert b"application/pkcs8" in (tmp_path / "keygen.out").read_bytes()
    assert world.state(device.device_id) == "issued"


def test_fail_client_header_through_nginx_is_replaced(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    """A device without a client certificate sends another device's certificate itself: nginx
    overwrites the header (here: with nothing), so the node sees no certificate."""
    world = proxied.world
    (victim,) = world.make_devices(1)
    sh(csr_script(victim.device_id), tmp_path)
    forged = f"-H '{HEADER}: {escaped_pem(victim.certificate)}'"
    for front in (proxied.est, proxied.est_unix):
        status = post_status(front, tmp_path, f"--cacert {world.factory_anchor}", forged)
        assert status == "401", (tmp_path / "answer.txt").read_text()
    assert world.state(victim.device_id) == "listed"


@pytest.mark.parametrize(
    "client",
    [
        pytest.param("none", id="fail-no-client-certificate"),
        pytest.param("device", id="fail-the-device-certificate"),
        pytest.param("unpinned", id="fail-proxy-ca-certificate-not-pinned"),
    ],
)
def test_fail_local_process_with_a_stolen_header_is_refused_at_tls(
    proxied: ProxiedWorld, tmp_path: Path, client: str
) -> None:
    """Straight to the TLS proxy listener from the trusted address, with a device's (public)
    certificate in the header: without nginx's client certificate there is no TLS session."""
    world = proxied.world
    device, audit = fresh_device(world, tmp_path)
    header = f"-H '{HEADER}: {escaped_pem(device.certificate)}'"
    identity = f"--cert {device.cert_path} --key {device.key_path}" if client == "device" else ""
    if client == "unpinned":
        # Another client certificate from the proxy CA: not the one [proxy] pins.
        sh(
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=rogue "
            "-keyout rogue.key -out rogue.csr && openssl x509 -req -in rogue.csr "
            f"-CA {proxied.proxy_pki / 'proxy-ca.pem'} -CAkey {proxied.proxy_pki / 'proxy-ca.key'} "
            f"-CAcreateserial -days 1 -extfile {proxied.proxy_pki / 'client.ext'} -out rogue.pem",
            tmp_path,
        )
        identity = "--cert rogue.pem --key rogue.key"
    curl_refused(
        proxied.proxy_listener,
        tmp_path,
        f"--cacert {world.factory_anchor} --interface {PROXY_PEER}",
        identity,
        header,
    )
    assert_untouched(world, device.device_id, audit)
    if client == "unpinned":
        assert "is not one of [proxy] fingerprints" in proxied.node.log()
    else:
        assert "TLS handshake failed" in proxied.node.log()
    # Positive control: the same request with nginx's certificate is honoured.
    status = post_status(
        proxied.proxy_listener, tmp_path, proxied.as_nginx, f"--interface {PROXY_PEER}", header
    )
    assert status == "200", (tmp_path / "answer.txt").read_text()
    assert world.state(device.device_id) == "issued"


def test_fail_plain_http_to_the_proxy_listener_gets_no_http(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    world = proxied.world
    device, audit = fresh_device(world, tmp_path)
    header = f"-H '{HEADER}: {escaped_pem(device.certificate)}'"
    url = f"http://127.0.0.1:{proxied.proxy_port}/.well-known/est"
    curl_refused(url, tmp_path, f"--interface {PROXY_PEER}", header)
    assert_untouched(world, device.device_id, audit)


def test_fail_unix_socket_refuses_a_user_outside_the_proxy_group(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    world = proxied.world
    device, audit = fresh_device(world, tmp_path)
    info = proxied.socket_path.lstat()
    assert oct(info.st_mode & 0o777) == "0o660"
    assert info.st_uid == os.getuid() and info.st_gid == grp.getgrnam(WORKER_GROUP).gr_gid
    request = (
        f"curl -sS --max-time 30 -o /dev/null -w '%{{http_code}}' --unix-socket "
        f"{proxied.socket_path} -H '{HEADER}: {escaped_pem(device.certificate)}' "
        "-H 'Content-Type: application/pkcs10' -H 'Content-Transfer-Encoding: base64' "
        "--data-binary @- http://node/.well-known/est/simpleenroll < csr.b64"  # opened as root
    )
    # root ignores file permissions: the local process runs as an unprivileged user.
    outsider = sh(
        f"setpriv --reuid={OUTSIDER} --regid={OUTSIDER} --clear-groups {request}",
        tmp_path,
        check=False,
    )
    assert outsider.returncode == 7, (outsider.stdout, outsider.stderr)  # couldn't connect
    assert "Permission denied" in outsider.stderr or "Couldn't connect" in outsider.stderr
    assert_untouched(world, device.device_id, audit)
    # Positive control: the same unprivileged user in nginx's group is served.
    member = sh(
        f"setpriv --reuid={OUTSIDER} --regid={WORKER_GROUP} --clear-groups {request}", tmp_path
    )
    assert member.stdout.strip() == "200", member.stderr
    assert world.state(device.device_id) == "issued"


def test_fail_forged_certificate_from_the_proxy_is_reverified(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    world = proxied.world
    (device,) = world.make_devices(1)
    sh(csr_script(device.device_id), tmp_path)
    forged = f"-H '{HEADER}: {escaped_pem(self_signed_as(device.device_id))}'"
    options = (proxied.as_nginx, f"--interface {PROXY_PEER}", forged)
    status = post_status(proxied.proxy_listener, tmp_path, *options)
    assert status == "401", (tmp_path / "answer.txt").read_text()
    assert world.state(device.device_id) == "listed"


def test_fail_nginx_certificate_from_outside_the_address_fence_is_ignored(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    world = proxied.world
    (device,) = world.make_devices(1)
    sh(csr_script(device.device_id), tmp_path)
    header = f"-H '{HEADER}: {escaped_pem(device.certificate)}'"
    # From 127.0.0.2, which is not in [proxy] trusted: the second fence.
    outside = f"--interface {OUTSIDE_PEER}"
    status = post_status(proxied.proxy_listener, tmp_path, proxied.as_nginx, outside, header)
    assert status == "401", (tmp_path / "answer.txt").read_text()
    assert world.state(device.device_id) == "listed"
    assert f"ignored the {HEADER} header from {OUTSIDE_PEER}" in proxied.node.log()


def test_fail_malformed_header_from_the_proxy_is_400(proxied: ProxiedWorld, tmp_path: Path) -> None:
    (device,) = proxied.world.make_devices(1)
    sh(csr_script(device.device_id), tmp_path)
    garbled = f"-H '{HEADER}: %2D%2D%2D%2D%2DBEGIN%20CERTIFICATE'"
    options = (proxied.as_nginx, f"--interface {PROXY_PEER}", garbled)
    status = post_status(proxied.proxy_listener, tmp_path, *options)
    assert status == "400", (tmp_path / "answer.txt").read_text()


def test_fail_direct_tls_listener_ignores_the_header(proxied: ProxiedWorld, tmp_path: Path) -> None:
    world = proxied.world
    (device,) = world.make_devices(1)
    sh(csr_script(device.device_id), tmp_path)
    header = f"-H '{HEADER}: {escaped_pem(device.certificate)}'"
    status = post_status(world.est, tmp_path, f"--cacert {world.factory_anchor}", header)
    assert status == "401", (tmp_path / "answer.txt").read_text()
    assert world.state(device.device_id) == "listed"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(("--trusted-proxy", "0.0.0.0/0"), id="fail-ipv4-everything"),
        pytest.param(
            ("--trusted-proxy", "::/0", "--allow-wide-proxy-range"), id="fail-ipv6-everything"
        ),
        pytest.param(("--trusted-proxy", "127.0.0.0/8"), id="fail-wide-without-flag"),
    ],
)
def test_fail_set_proxy_refuses_everything_and_wide_ranges(
    proxied: ProxiedWorld, options: tuple[str, ...]
) -> None:
    path = proxied.world.node_dir / "node.toml"
    before = path.read_bytes()
    result = ztpki("node", "set-proxy", "--dir", str(proxied.world.node_dir), *options, check=False)
    assert result.returncode == 2, result.stderr
    assert "every address" in result.stderr or "--allow-wide-proxy-range" in result.stderr
    assert path.read_bytes() == before
