"""nginx in front of the customer node, for the proxy end-to-end tests: deploy/nginx's
configuration rendered for loopback (tests/support/nginx.py), the proxy CA and nginx's client
certificate (made with openssl, as docs/node.md shows), and the node restarted with a TLS and
a Unix-socket proxy listener."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from node_fixtures import CLIENT_PASSPHRASE, NODE_PASSPHRASE, NodeWorld, cli
from tests.support.deploy_units import NODE_UNIT, Unit
from tests.support.nginx import (
    NODE_SITE,
    WORKER_GROUP,
    listening_socket,
    render,
    start_nginx,
    write_nginx_conf,
)
from tests.support.proxy_pki import make_proxy_pki
from tests.support.services import Service, start

from ztpki.pki.keys import decode_pkcs8, encode_pkcs8_pem
from ztpki.pki.pem import fingerprint_sha256, load_certificates_pem

PROXY_PEER = "127.0.0.1"  # nginx connects to the node from here: the trusted proxy address
OUTSIDE_PEER = "127.0.0.2"  # a local address outside the fence
HEADER = "X-SSL-Client-Cert"  # the header deploy/nginx/ztpki-node.conf sets
OUTSIDER = "23456"  # uid and gid of a local process outside nginx's group


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


def start_proxied_node(world: NodeWorld, socket_path: Path) -> tuple[Service, int, Path]:
    """Make the proxy PKI, configure [proxy] with `node set-proxy` (nginx's certificate
    pinned), restart the node with the command line of deploy/systemd/ztpki-node.service (its
    Unix-socket proxy listener; the passphrases from its credentials directory) and a TLS
    proxy listener besides."""
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
    unit = Unit.parse(NODE_UNIT)
    credentials = unit.write_credentials(
        world.root / "node-credentials",
        {"node-passphrase": NODE_PASSPHRASE, "client-passphrase": CLIENT_PASSPHRASE},
    )
    command = unit.command(
        {"/var/lib/ztpki/node": str(world.node_dir), "/run/ztpki/proxy.sock": str(socket_path)},
        {"ZTPKI_NODE_LISTEN": "127.0.0.1:0", "ZTPKI_NODE_WORKERS": "2"},
        credentials,
    )
    assert f"unix:{socket_path}" in command
    node = start(
        [*command, "--proxy-listen", "127.0.0.1:0"],
        log_path=world.root / "node-proxied.log",
        # No passphrase in the environment: the unit's --passphrase-file options read them.
        env={"ZTPKI_NODE_PASSPHRASE": "", "ZTPKI_CLIENT_PASSPHRASE": ""},
    )
    world.services.append(node)
    world.node = node
    lines = [x for x in node.log().splitlines() if x.startswith("proxy listening on ")]
    assert lines[0] == f"proxy listening on unix:{socket_path}", lines
    return node, int(lines[1].rpartition(":")[2]), pki


def nginx_key(world: NodeWorld, prefix: Path) -> Path:
    """The node's server key, unencrypted and 0600, as nginx's master reads it."""
    key = decode_pkcs8(
        (world.root / "server" / "key.pem").read_bytes(), passphrase=NODE_PASSPHRASE.encode()
    )
    prefix.mkdir(parents=True)
    path = prefix / "server.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode_pkcs8_pem(key, passphrase=None))
    return path


def start_front(
    world: NodeWorld, prefix: Path, node: str, pki: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """An nginx on 127.0.0.1 running deploy/nginx/ztpki-node.conf, unchanged but for its
    placeholders, to the node's proxy listener `node` (unix:PATH, or HOST:PORT over TLS);
    its port."""
    key = nginx_key(world, prefix)
    sock = listening_socket()
    port = sock.getsockname()[1]
    site = render(
        NODE_SITE,
        {
            "LISTEN": f"127.0.0.1:{port}",
            "CERT": world.root / "server" / "cert.pem",
            "KEY": key,
            "NODE": node,
            "NODE_SCHEME": "http" if node.startswith("unix:") else "https",
            "PROXY_CERT": pki / "nginx-client.pem",
            "PROXY_KEY": pki / "nginx-client.key",
            "NODE_CA": world.factory_anchor,
            "NODE_NAME": "localhost",
            "ACCESS_LOG": prefix / "access.log",
        },
    )
    return start_nginx(write_nginx_conf(prefix, site), [sock]), port
