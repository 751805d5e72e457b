"""Attacks on the node's proxy listeners: a local process that speaks for a device with a stolen
(public) certificate header, trusted address ranges that admit every host, and the proxy-to-node
hop that carries serverkeygen's private keys.

The deployment's node gets `ztpki node set-proxy` (a proxy CA made with openssl, the proxy
address 127.0.0.1, the socket group nogroup) and is restarted with a TLS and a Unix-socket proxy
listener. The legitimate proxy is played by a client with the proxy's certificate (and, for the
socket, by an unprivileged process in the proxy's group): each case's positive control.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import os
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from tests.attacks.attack_deployment import EST, Deployment, DeviceUnderTest
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import Observed, https_context, https_request
from tests.support.proxy_pki import ProxyPKI, make_proxy_pki
from tests.support.services import start
from tests.support.unix_client import unix_exchange

from ztpki.pki.keys import KeySpec, decode_pkcs8, generate_private_key, keys_match
from ztpki.pki.pem import load_certificates_pem
from ztpki.protocol.est import CSR_TYPE, build_csr, decode_serverkeygen, encode_csr

pytestmark = pytest.mark.timeout(240)

CATEGORY = "proxy"
HEADER = "X-SSL-Client-Cert"
OUTSIDER = 23456  # uid and gid of a local process outside the proxy's group
PROXY_GID = 65534
PROXY_GROUP = grp.getgrgid(PROXY_GID).gr_name  # nogroup


@dataclass
class ProxySetup:
    pki: ProxyPKI
    socket_path: Path


@pytest.fixture(scope="module")
def proxy(deployment: Deployment) -> Iterator[ProxySetup]:
    d = deployment
    # Other users must traverse to the socket (the deployment's directory is private).
    socket_dir = Path(tempfile.mkdtemp(prefix="ztpki-attack-proxy-"))
    socket_dir.chmod(0o711)
    pki = make_proxy_pki(d.root / "proxy-pki")
    options = ["--proxy-ca", str(pki.ca), "--trusted-proxy", "127.0.0.1"]
    d.cli("node", "set-proxy", "--dir", str(d.node_dir), *options)
    d.cli("node", "set-proxy", "--dir", str(d.node_dir), "--proxy-socket-group", PROXY_GROUP)
    yield ProxySetup(pki, socket_dir / "proxy.sock")
    shutil.rmtree(socket_dir, ignore_errors=True)


def proxy_port(d: Deployment, setup: ProxySetup) -> int:
    """The node's TLS proxy listener; (re)starts the node with its proxy listeners when they are
    not up (first use, or a fault case restarted the node without them)."""
    lines = [x for x in d.node.log().splitlines() if x.startswith("proxy listening on ")]
    if not lines:
        port = d.node.port
        d.node.stop()
        listen = ["--listen", f"127.0.0.1:{port}"]
        proxies = ["--proxy-listen", "127.0.0.1:0", "--proxy-listen", f"unix:{setup.socket_path}"]
        d.services["node"] = start(
            ["node", "serve", "--dir", str(d.node_dir), *listen, *proxies],
            log_path=d.logs / f"node-proxied-{os.urandom(3).hex()}.log",
            env=d.env,
        )
        lines = [x for x in d.node.log().splitlines() if x.startswith("proxy listening on ")]
    return int(lines[0].rpartition(":")[2])


def _record(report: AttackReport, case: str, attack: str, observed: str, verdict: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed=observed,
        verdict=verdict,
    )


def escaped(device: DeviceUnderTest) -> str:
    return quote(device.certificate.public_bytes(serialization.Encoding.PEM).decode(), safe="")


def _csr(device: DeviceUnderTest) -> bytes:
    return encode_csr(build_csr(generate_private_key(KeySpec.EC_P256), device_id=device.device_id))


def raw_enroll(device: DeviceUnderTest) -> bytes:
    """simpleenroll as bytes on the wire, with device's certificate in the proxy header."""
    body = _csr(device)
    return (
        f"POST {EST}/simpleenroll HTTP/1.1\r\nHost: node\r\nContent-Type: {CSR_TYPE}\r\n"
        f"Content-Transfer-Encoding: base64\r\n{HEADER}: {escaped(device)}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def proxy_context(d: Deployment, setup: ProxySetup) -> ssl.SSLContext:
    """The legitimate proxy's TLS identity (what nginx's proxy_ssl_certificate presents)."""
    key = decode_pkcs8(setup.pki.key.read_bytes(), passphrase=None)
    chain = load_certificates_pem(setup.pki.cert.read_bytes())
    return https_context(key=key, chain=chain, anchors=d.node_anchors)


def speak_for(
    d: Deployment,
    address: tuple[str, int],
    device: DeviceUnderTest,
    operation: str,
    context: ssl.SSLContext,
) -> Observed:
    """One EST request carrying device's certificate in the proxy header."""
    headers = {
        "Content-Type": CSR_TYPE,
        "Content-Transfer-Encoding": "base64",
        HEADER: escaped(device),
    }
    return https_request(
        address,
        "POST",
        f"{EST}/{operation}",
        context=context,
        body=_csr(device),
        headers=headers,
        transcript=d.transcript,
        key_expected=operation == "serverkeygen",
    )


# --- a local process with a stolen certificate header -----------------------------------------


@pytest.mark.parametrize(
    ("client", "what"),
    [
        pytest.param("none", "no client certificate", id="fail-no-client-certificate"),
        pytest.param(
            "device",
            "the device's own temporary certificate and key as its TLS identity",
            id="fail-device-certificate",
        ),
    ],
)
def test_stolen_header_from_a_local_process_is_refused_at_tls(
    deployment: Deployment,
    proxy: ProxySetup,
    attack_report: AttackReport,
    client: str,
    what: str,
) -> None:
    d = deployment
    port = proxy_port(d, proxy)
    victim = d.take_device()
    before = d.snapshot()
    mark = d.log_mark()
    key, chain = (victim.key, [victim.certificate]) if client == "device" else (None, [])
    attacker = https_context(key=key, chain=chain, anchors=d.node_anchors)
    obs = speak_for(d, ("127.0.0.1", port), victim, "simpleenroll", attacker)
    assert obs.status is None, obs.summary()
    reason = d.tls_refusal(mark)
    unchanged = d.check_unchanged(
        before, unaudited_because="refused in the TLS handshake, before any request"
    )
    # Positive control: the proxy's own certificate, same header, same address.
    served = speak_for(d, ("127.0.0.1", port), victim, "simpleenroll", proxy_context(d, proxy))
    assert served.status == 200, served.summary()
    _record(
        attack_report,
        "stolen-header-device-certificate"
        if client == "device"
        else "stolen-header-no-certificate",
        f"a local process connects to the node's TLS proxy listener from the trusted proxy "
        f"address with {what}, and sends simpleenroll with a listed device's certificate "
        f"(public) in the {HEADER} header",
        f"TLS handshake refused ({reason}); no HTTP answer; {unchanged}; the same request "
        "with the proxy's client certificate is served (200)",
        "refused",
    )


def test_plain_http_to_the_proxy_listener_gets_no_http(
    deployment: Deployment, proxy: ProxySetup, attack_report: AttackReport
) -> None:
    d = deployment
    port = proxy_port(d, proxy)
    victim = d.take_device()
    before = d.snapshot()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw_enroll(victim))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert not answer.startswith(b"HTTP/"), answer[:100]
    unchanged = d.check_unchanged(before, unaudited_because="no TLS, no request")
    _record(
        attack_report,
        "stolen-header-plain-http",
        "a local process sends simpleenroll in plain HTTP to the node's proxy listener with a "
        f"listed device's certificate in the {HEADER} header (the listener of earlier versions)",
        f"no HTTP answer ({len(answer)} bytes back, then closed): the listener speaks only TLS; "
        f"{unchanged}",
        "refused",
    )


def test_unix_socket_refuses_a_local_user_outside_the_proxy_group(
    deployment: Deployment, proxy: ProxySetup, attack_report: AttackReport
) -> None:
    d = deployment
    proxy_port(d, proxy)
    info = proxy.socket_path.lstat()
    mode = oct(info.st_mode & 0o777)
    assert mode == "0o660" and info.st_gid == PROXY_GID, (mode, info.st_gid)
    victim = d.take_device()
    before = d.snapshot()
    request = raw_enroll(victim)
    outsider = unix_exchange(proxy.socket_path, request, uid=OUTSIDER, gid=OUTSIDER)
    assert outsider == "connect: Permission denied", outsider
    unchanged = d.check_unchanged(before, unaudited_because="the kernel refused the connect")
    member = unix_exchange(proxy.socket_path, request, uid=OUTSIDER, gid=PROXY_GID)
    assert member == "HTTP/1.1 200 OK", member
    _record(
        attack_report,
        "unix-socket-other-user",
        f"an unprivileged local process (uid/gid {OUTSIDER}, not in the proxy's group) "
        f"connects to the node's Unix-socket proxy listener to send simpleenroll with a listed "
        f"device's certificate in the {HEADER} header",
        f"socket created mode 0660, group {PROXY_GROUP}; connect refused (Permission denied); "
        f"{unchanged}; the same uid in group {PROXY_GROUP} is served (200)",
        "refused",
    )


# --- trusted address ranges -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "options", "phrase"),
    [
        pytest.param(
            "trusted-range-everything-ipv4",
            ("--trusted-proxy", "0.0.0.0/0"),
            "every address",
            id="fail-ipv4-everything",
        ),
        pytest.param(
            "trusted-range-everything-ipv6",
            ("--trusted-proxy", "::/0", "--allow-wide-proxy-range"),
            "every address",
            id="fail-ipv6-everything-even-with-the-flag",
        ),
        pytest.param(
            "trusted-range-wide",
            ("--trusted-proxy", "10.0.0.0/8"),
            "--allow-wide-proxy-range",
            id="fail-wide-without-the-flag",
        ),
    ],
)
def test_wide_trusted_proxy_ranges_are_refused(
    deployment: Deployment,
    proxy: ProxySetup,
    attack_report: AttackReport,
    tmp_path: Path,
    case: str,
    options: tuple[str, ...],
    phrase: str,
) -> None:
    d = deployment
    toml = d.node_dir / "node.toml"
    before = toml.read_bytes()
    result = d.operator("node", "set-proxy", "--dir", str(d.node_dir), *options)
    assert result.status == 2, result.err
    assert phrase in result.err, result.err
    assert toml.read_bytes() == before
    # The same range written into node.toml by hand: the node refuses to start with it.
    edited = tmp_path / "node"
    edited.mkdir()
    text = before.decode().replace('trusted = [\n    "127.0.0.1/32",\n]', "", 1)
    assert text != before.decode(), "node.toml layout changed"
    network = options[1]
    flag = "allow_wide_range = true\n" if "--allow-wide-proxy-range" in options else ""
    text = text.replace("[proxy]\n", f'[proxy]\n{flag}trusted = ["{network}"]\n', 1)
    (edited / "node.toml").write_text(text)
    serve = d.operator("node", "serve", "--dir", str(edited), "--listen", "127.0.0.1:0")
    assert serve.status == 1 and phrase.split()[-1] in serve.err, serve.err
    assert "listening on" not in serve.out
    refusal = result.err.strip().splitlines()[-1]
    _record(
        attack_report,
        case,
        f"`ztpki node set-proxy {' '.join(options)}`, and the same range written into "
        f"node.toml by hand: every host in {options[1]} could then speak for any device",
        f"set-proxy exits 2 ({refusal}); node.toml unchanged; `node serve` with the hand-edited "
        "file exits 1 before listening",
        "refused",
    )


# --- serverkeygen's private key on the proxy-to-node hop --------------------------------------


class RecordingRelay:
    """A TCP relay between the proxy and the node that keeps every byte of the hop."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target = target
        self.recorded = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", int(self.listener.getsockname()[1])

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target, timeout=60)
        pumps = [
            threading.Thread(target=self._pump, args=(client, upstream)),
            threading.Thread(target=self._pump, args=(upstream, client)),
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    self.recorded += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> bytes:
        self.listener.close()
        self._thread.join(timeout=60)
        return bytes(self.recorded)


def test_serverkeygen_key_never_crosses_the_proxy_hop_in_clear(
    deployment: Deployment, proxy: ProxySetup, attack_report: AttackReport
) -> None:
    d = deployment
    port = proxy_port(d, proxy)
    device = d.take_device()
    relay = RecordingRelay(("127.0.0.1", port))
    answer = speak_for(d, relay.address, device, "serverkeygen", proxy_context(d, proxy))
    hop = relay.close()
    assert answer.status == 200, answer.summary()
    keygen = decode_serverkeygen(answer.headers["Content-Type"], answer.body)
    key_der = keygen.private_key_der
    assert keys_match(decode_pkcs8(key_der, passphrase=None), keygen.certificates[0].public_key())
    b64 = base64.b64encode(key_der)
    assert hop[:1] == b"\x16", hop[:8]  # a TLS handshake record opens the hop
    assert key_der not in hop
    assert not any(b64[i : i + 24] in hop for i in range(0, len(b64) - 24, 12))
    assert b"PRIVATE KEY" not in hop and b"application/pkcs8" not in hop
    assert b"HTTP/1.1" not in hop
    _record(
        attack_report,
        "serverkeygen-key-on-the-hop",
        "a recording relay on the hop between the proxy and the node's proxy listener while "
        "the proxy asks serverkeygen for a listed device",
        f"{len(hop)} bytes on the hop, TLS records only: no HTTP, no application/pkcs8 part, "
        "neither the key's DER nor any 24 characters of its base64; the proxy got the key and "
        "it matches the issued certificate. (A Unix-socket hop never leaves the kernel; no "
        "plain-TCP proxy listener exists.)",
        "refused",
    )


def test_a_device_ca_as_proxy_ca_is_refused(
    deployment: Deployment, proxy: ProxySetup, attack_report: AttackReport, tmp_path: Path
) -> None:
    """The operator gives the customer CA chain as --proxy-ca: every customized device (its
    operational certificate is from that CA) could then speak for every other device."""
    d = deployment
    copy = tmp_path / "node"
    shutil.copytree(d.node_dir, copy, ignore=shutil.ignore_patterns("node.sqlite*"))
    chain = str(d.root / "customer-chain.pem")
    d.operator("node", "set-proxy", "--dir", str(copy), "--proxy-ca", chain)
    listen = ["--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0"]
    result = d.operator("node", "serve", "--dir", str(copy), *listen)
    assert result.status == 1, (result.out, result.err)
    assert "also a CA of this node's devices" in result.err, result.err
    assert "listening on" not in result.out
    refusal = " ".join(result.err[result.err.index("error:") :].split())
    _record(
        attack_report,
        "device-ca-as-proxy-ca",
        "the operator makes the customer CA (which issues every device's operational "
        "certificate) the proxy CA, so that any customized device could connect as a proxy",
        f"`node serve` exits 1 before listening: {refusal}",
        "refused",
    )
