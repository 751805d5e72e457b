"""nginx in front of the customer node, for the proxy end-to-end tests: its configuration,
the proxy CA and nginx's client certificate (made with openssl, as docs/node.md shows), and
the node restarted with a TLS and a Unix-socket proxy listener."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from node_fixtures import ENV, NODE_PASSPHRASE, NodeWorld, cli
from tests.support.proxy_pki import make_proxy_pki
from tests.support.services import Service, start

from ztpki.pki.keys import decode_pkcs8, encode_pkcs8_pem
from ztpki.pki.pem import fingerprint_sha256, load_certificates_pem

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
PROXY_PEER = "127.0.0.2"  # nginx connects to the node from here (proxy_bind)
HEADER = "X-SSL-Client-Cert"
OUTSIDER = "23456"  # uid and gid of a local process outside nginx's group
WORKER_GROUP = grp.getgrgid(65534).gr_name  # nogroup: the group nginx's worker runs in

NGINX_CONF = """
daemon off;
{user}
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
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_verify_client optional_no_ca;
    ssl_verify_depth 4;
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        location /.well-known/est/ {{
            proxy_pass https://127.0.0.1:{node_port};
            proxy_bind {peer};
            proxy_ssl_certificate {proxy_cert};
            proxy_ssl_certificate_key {proxy_key};
            proxy_ssl_trusted_certificate {node_ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_set_header {header} $ssl_client_escaped_cert;
        }}
    }}
    server {{
        listen 127.0.0.1:{unix_port} ssl;
        location /.well-known/est/ {{
            proxy_pass http://unix:{socket}:;
            proxy_set_header {header} $ssl_client_escaped_cert;
        }}
    }}
}}
"""


@dataclass
class ProxiedWorld:
    world: NodeWorld
    node: Service
    proxy_port: int  # the node's TLS proxy listener
    socket_path: Path  # the node's Unix-socket proxy listener
    nginx_port: int  # nginx -> node over TLS
    nginx_unix_port: int  # nginx -> node over the Unix socket
    proxy_pki: Path  # proxy-ca.pem, nginx-client.pem/.key

    @property
    def est(self) -> str:
        return f"https://127.0.0.1:{self.nginx_port}/.well-known/est"

    @property
    def est_unix(self) -> str:
        return f"https://127.0.0.1:{self.nginx_unix_port}/.well-known/est"

    @property
    def proxy_listener(self) -> str:
        return f"https://localhost:{self.proxy_port}/.well-known/est"

    @property
    def as_nginx(self) -> str:
        """curl options to speak to the proxy listener as nginx does (its certificate)."""
        pki = self.proxy_pki
        return (
            f"--cacert {self.world.factory_anchor} --cert {pki / 'nginx-client.pem'} "
            f"--key {pki / 'nginx-client.key'}"
        )


def listening_socket() -> socket.socket:
    """nginx inherits its listening sockets (its NGINX environment variable, as in a binary
    upgrade): connections queue from the start, so there is no port race and no readiness
    poll."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def start_proxied_node(world: NodeWorld, socket_path: Path) -> tuple[Service, int, Path]:
    """Make the proxy PKI, configure [proxy] with `node set-proxy` (nginx's certificate
    pinned), restart the node with a TLS and a Unix-socket proxy listener."""
    proxy_pki = make_proxy_pki(world.root / "proxy-pki")
    pki = proxy_pki.directory
    pin = fingerprint_sha256(load_certificates_pem(proxy_pki.cert.read_bytes())[0])
    world.node.stop()
    cli(
        "node",
        "set-proxy",
        "--dir",
        str(world.node_dir),
        "--proxy-ca",
        str(pki / "proxy-ca.pem"),
        "--trusted-proxy",
        PROXY_PEER,
        "--proxy-header",
        HEADER,
        "--proxy-socket-group",
        WORKER_GROUP,
        "--proxy-fingerprint",
        f"sha256:{pin}",
    )
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
            "--proxy-listen",
            f"unix:{socket_path}",
        ],
        log_path=log,
        env=ENV,
    )
    world.services.append(node)
    world.node = node
    lines = [x for x in node.log().splitlines() if x.startswith("proxy listening on ")]
    assert lines[1] == f"proxy listening on unix:{socket_path}", lines
    return node, int(lines[0].rpartition(":")[2]), pki


def start_nginx(
    world: NodeWorld, node_port: int, socket_path: Path, pki: Path
) -> tuple[subprocess.Popen[bytes], int, int]:
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
    socks = [listening_socket(), listening_socket()]
    tls_port, unix_port = (s.getsockname()[1] for s in socks)
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            # As root the master hands requests to a worker of this user and group: the
            # socket's group must admit it (and only it).
            user=f"user nobody {WORKER_GROUP};" if os.getuid() == 0 else "",
            prefix=prefix,
            tls_port=tls_port,
            unix_port=unix_port,
            cert=world.root / "server" / "cert.pem",
            key=key_path,
            node_port=node_port,
            peer=PROXY_PEER,
            proxy_cert=pki / "nginx-client.pem",
            proxy_key=pki / "nginx-client.key",
            node_ca=world.factory_anchor,
            socket=socket_path,
            header=HEADER,
        )
    )
    log = prefix / "stderr.log"
    fds = "".join(f"{s.fileno()};" for s in socks)
    with socks[0], socks[1], log.open("wb") as err:
        process = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "NGINX": fds},
            pass_fds=tuple(s.fileno() for s in socks),
            start_new_session=True,
        )
    # Our copies of the sockets are closed: if nginx dies, connections are refused, not queued.
    return process, tls_port, unix_port


def stop_nginx(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: master and worker
        process.wait()
