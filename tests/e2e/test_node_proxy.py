"""The node behind a real TLS-terminating nginx: devices enroll with curl through the proxy.

nginx runs as an ordinary process on 127.0.0.1 (own prefix, `daemon off;`, a master and one
worker; it segfaults on an inherited socket with `master_process off`), verifies that the
client holds the key of its certificate (`ssl_verify_client optional_no_ca`: the node checks
the chain itself) and forwards `$ssl_client_escaped_cert` from 127.0.0.2 to the node's proxy
listener. The node trusts only 127.0.0.2, so anything reaching the proxy listener from
127.0.0.1 plays a peer that is not a trusted proxy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from node_fixtures import ENV, NODE_PASSPHRASE, NodeWorld, build_world, cli
from tests.support.services import Service, start
from tests.support.shell import sh

from ztpki.pki.keys import KeySpec, decode_pkcs8, encode_pkcs8_pem, generate_private_key
from ztpki.pki.pem import load_certificates_pem

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
PROXY_PEER = "127.0.0.2"  # nginx connects to the node from here (proxy_bind)
HEADER = "X-SSL-Client-Cert"

pytestmark = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed (apt-get install nginx-light); the proxy listener is "
    "still covered by tests/unit/node/test_node_proxy.py",
)

NGINX_CONF = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_verify_client optional_no_ca;
        ssl_verify_depth 4;
        location / {{
            proxy_pass http://127.0.0.1:{node_port};
            proxy_bind {peer};
            proxy_set_header {header} $ssl_client_escaped_cert;
        }}
    }}
}}
"""


@dataclass
class ProxiedWorld:
    world: NodeWorld
    node: Service
    proxy_port: int  # the node's proxy listener (plain HTTP)
    nginx_port: int

    @property
    def est(self) -> str:
        return f"https://127.0.0.1:{self.nginx_port}/.well-known/est"

    @property
    def proxy_listener(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/.well-known/est"


def listening_socket() -> socket.socket:
    """nginx inherits this socket (its NGINX environment variable, as in a binary upgrade):
    connections queue from the start, so there is no port race and no readiness poll."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def start_proxied_node(world: NodeWorld) -> tuple[Service, int]:
    """Restart the node with [proxy] trusted = [PROXY_PEER] and a proxy listener."""
    world.node.stop()
    path = world.node_dir / "node.toml"
    data = tomllib.loads(path.read_text())
    data["proxy"] = {"trusted": [PROXY_PEER], "header": HEADER}
    path.write_text(tomli_w.dumps(data))
    log = world.root / "node-proxied.log"
    node = start(
        [
            "node",
            "serve",
            "--dir",
            str(world.node_dir),
            "--listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
        ],
        log_path=log,
        env=ENV,
    )
    world.services.append(node)
    world.node = node
    line = next(x for x in node.log().splitlines() if x.startswith("proxy listening on "))
    return node, int(line.rpartition(":")[2])


def start_nginx(world: NodeWorld, node_port: int) -> tuple[subprocess.Popen[bytes], int]:
    assert NGINX is not None
    prefix = world.root / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    key = decode_pkcs8(
        (world.root / "server" / "key.pem").read_bytes(), passphrase=NODE_PASSPHRASE.encode()
    )
    key_path = prefix / "server.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode_pkcs8_pem(key, passphrase=None))
    sock = listening_socket()
    port = sock.getsockname()[1]
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            prefix=prefix,
            port=port,
            cert=world.root / "server" / "cert.pem",
            key=key_path,
            node_port=node_port,
            peer=PROXY_PEER,
            header=HEADER,
        )
    )
    log = prefix / "stderr.log"
    with sock, log.open("wb") as err:
        process = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "NGINX": f"{sock.fileno()};"},
            pass_fds=(sock.fileno(),),
            start_new_session=True,
        )
    # Our copy of the socket is closed: if nginx dies, connections are refused, not queued.
    return process, port


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedWorld]:
    world = build_world(tmp_path_factory.mktemp("node-proxy"))
    nginx = None
    try:
        node, proxy_port = start_proxied_node(world)
        nginx, nginx_port = start_nginx(world, proxy_port)
        yield ProxiedWorld(world, node, proxy_port, nginx_port)
    finally:
        if nginx is not None:
            nginx.terminate()
            try:
                nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(nginx.pid, signal.SIGKILL)  # its own session: master and worker
                nginx.wait()
        world.stop()


def escaped_pem(cert: x509.Certificate) -> str:
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")


def csr_script(device_id: str) -> str:
    return f"""
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out new.key
openssl req -new -key new.key -subj "/CN={device_id}/serialNumber={device_id}" -outform DER \\
  | base64 -w 64 > csr.b64
"""


def post_status(url: str, cwd: Path, *extra: str) -> str:
    """The HTTP status of a simpleenroll POST of cwd/csr.b64, by curl."""
    args = " ".join(extra)
    result = sh(
        f"curl -sS --max-time 30 -o answer.txt -w '%{{http_code}}' {args} "
        "-H 'Content-Type: application/pkcs10' -H 'Content-Transfer-Encoding: base64' "
        f"--data-binary @csr.b64 '{url}/simpleenroll'",
        cwd,
    )
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


def test_ok_policy_shows_the_trusted_proxy(proxied: ProxiedWorld) -> None:
    out = cli("node", "policy", "--dir", str(proxied.world.node_dir))
    assert f"trusted proxies: {PROXY_PEER}/32 (header {HEADER})" in out


def test_ok_enroll_and_confirm_through_nginx(proxied: ProxiedWorld, tmp_path: Path) -> None:
    world = proxied.world
    (device,) = world.make_devices(1)
    script = f"""
EST={proxied.est}
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


def test_fail_client_header_through_nginx_is_replaced(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    """A device without a client certificate sends another device's certificate itself: nginx
    overwrites the header (here: with nothing), so the node sees no certificate."""
    world = proxied.world
    (victim,) = world.make_devices(1)
    sh(csr_script(victim.device_id), tmp_path)
    forged = f"-H '{HEADER}: {escaped_pem(victim.certificate)}'"
    status = post_status(proxied.est, tmp_path, f"--cacert {world.factory_anchor}", forged)
    assert status == "401", (tmp_path / "answer.txt").read_text()
    assert world.state(victim.device_id) == "listed"


def test_fail_header_from_a_peer_that_is_not_a_trusted_proxy(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    world = proxied.world
    (device,) = world.make_devices(1)
    sh(csr_script(device.device_id), tmp_path)
    header = f"-H '{HEADER}: {escaped_pem(device.certificate)}'"
    # Straight to the proxy listener from 127.0.0.1, which is not in [proxy] trusted.
    status = post_status(proxied.proxy_listener, tmp_path, header)
    assert status == "401", (tmp_path / "answer.txt").read_text()
    assert world.state(device.device_id) == "listed"
    assert f"ignored the {HEADER} header from 127.0.0.1" in proxied.node.log()
    # Positive control: the very same request from the trusted proxy address is honoured.
    status = post_status(proxied.proxy_listener, tmp_path, header, f"--interface {PROXY_PEER}")
    assert status == "200", (tmp_path / "answer.txt").read_text()
    assert world.state(device.device_id) == "issued"


def test_fail_forged_certificate_from_the_trusted_proxy_is_reverified(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    world = proxied.world
    (device,) = world.make_devices(1)
    sh(csr_script(device.device_id), tmp_path)
    forged = f"-H '{HEADER}: {escaped_pem(self_signed_as(device.device_id))}'"
    status = post_status(proxied.proxy_listener, tmp_path, forged, f"--interface {PROXY_PEER}")
    assert status == "401", (tmp_path / "answer.txt").read_text()
    assert world.state(device.device_id) == "listed"


def test_fail_malformed_header_from_the_trusted_proxy_is_400(
    proxied: ProxiedWorld, tmp_path: Path
) -> None:
    (device,) = proxied.world.make_devices(1)
    sh(csr_script(device.device_id), tmp_path)
    garbled = f"-H '{HEADER}: %2D%2D%2D%2D%2DBEGIN%20CERTIFICATE'"
    status = post_status(proxied.proxy_listener, tmp_path, garbled, f"--interface {PROXY_PEER}")
    assert status == "400", (tmp_path / "answer.txt").read_text()


def test_fail_direct_tls_listener_ignores_the_header(proxied: ProxiedWorld, tmp_path: Path) -> None:
    world = proxied.world
    (device,) = world.make_devices(1)
    sh(csr_script(device.device_id), tmp_path)
    header = f"-H '{HEADER}: {escaped_pem(device.certificate)}'"
    status = post_status(world.est, tmp_path, f"--cacert {world.factory_anchor}", header)
    assert status == "401", (tmp_path / "answer.txt").read_text()
    assert world.state(device.device_id) == "listed"
