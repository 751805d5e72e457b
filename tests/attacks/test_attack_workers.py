"""Attacks on `node serve --workers N` (the deployment's node runs one worker per core): a
client that tries to crash workers into a restart loop, a local user who reaches for the
workers' metrics exchange, and a proxy that keeps connecting after a reload withdrew its pin."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import tomllib
from pathlib import Path

import pytest
import tomli_w
from tests.attacks.attack_deployment import Deployment, wait_until
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import https_context, https_request
from tests.support.proxy_pki import make_proxy_pki
from tests.support.services import child_pids
from tests.support.unix_client import unix_exchange

from ztpki.pki.keys import decode_pkcs8
from ztpki.pki.pem import fingerprint_sha256, load_certificates_pem

pytestmark = pytest.mark.timeout(240)

CATEGORY = "workers"
OUTSIDER = 23456  # uid and gid of a local user other than the node's


def _record(report: AttackReport, case: str, attack: str, observed: str, verdict: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed=observed,
        verdict=verdict,
    )


def metrics_sockets(pids: set[int]) -> list[Path]:
    """The metrics-exchange sockets these workers listen on (from /proc/net/unix)."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if match := re.fullmatch(r"socket:\[(\d+)\]", target):
                inodes.add(match.group(1))
    found = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[6] in inodes and parts[7].endswith(".metrics.sock"):
            found.append(Path(parts[7]))
    return sorted(set(found))


def _anonymous(d: Deployment) -> ssl.SSLContext:
    return https_context(key=None, chain=[], anchors=d.node_anchors)


def _hostile_connections(d: Deployment) -> int:
    """Garbage before TLS, garbage after TLS, a header line past every limit, a connection
    cut mid-request: each many times. Returns how many were made."""
    host, port = d.node_address
    made = 0
    for _ in range(10):
        for payload in (b"\x16\x03\x01\xff\xff" + os.urandom(300), b"GET / HTTP/1.1\r\n\r\n"):
            with socket.create_connection((host, port), timeout=10) as raw:
                raw.sendall(payload)
                made += 1
        for request in (
            os.urandom(512),
            b"GET /.well-known/est/cacerts HTTP/1.1\r\nX: " + b"A" * 70_000 + b"\r\n\r\n",
            b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nContent-Length: 99\r\n\r\nab",
        ):
            with (
                socket.create_connection((host, port), timeout=10) as raw,
                _anonymous(d).wrap_socket(raw, server_hostname=host) as tls,
            ):
                # The node may hang up first: that is its answer.
                with contextlib.suppress(OSError):
                    tls.sendall(request)
                made += 1
    return made


def test_survived_hostile_clients_cannot_crash_workers_into_a_restart_loop(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    pids = child_pids(d.node.pid)
    assert len(pids) >= 2, "the deployment's node runs one worker per core"
    before = d.snapshot()
    mark = d.log_mark()
    made = _hostile_connections(d)
    # Positive control: the workers serve on.
    served = https_request(d.node_address, "GET", "/.well-known/est/cacerts", context=_anonymous(d))
    assert served.status == 200, served.summary()
    assert child_pids(d.node.pid) == pids
    logged = d.logged_since(mark)
    assert "starting another" not in logged and "cannot serve" not in logged, logged
    unchanged = d.check_unchanged(before, unaudited_because="no client was authenticated")
    _record(
        attack_report,
        "crash-workers-into-restart-loop",
        f"{made} connections to the supervised node (`node serve` with {len(pids)} workers): "
        "garbage instead of a TLS ClientHello, plain HTTP to the TLS port, random bytes after "
        "the handshake, a 70 kB header line, a request cut mid-body",
        f"every worker still the same process (no death, no restart logged); cacerts served "
        f"afterwards (200); {unchanged}",
        "survived",
    )


def test_refused_other_local_user_cannot_reach_the_metrics_exchange(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    sockets = metrics_sockets(child_pids(d.node.pid))
    assert len(sockets) >= 2, sockets
    directory = sockets[0].parent
    assert directory.stat().st_mode & 0o777 == 0o700
    request = b"GET / HTTP/1.0\r\n\r\n"
    outsider = unix_exchange(sockets[0], request, uid=OUTSIDER, gid=OUTSIDER)
    assert outsider == "connect: Permission denied", outsider
    # The socket through which workers wake worker 0's revocation sender, beside them.
    wake = directory / "revocations.wake.sock"
    assert wake.exists()
    woken = unix_exchange(wake, request, uid=OUTSIDER, gid=OUTSIDER)
    assert woken == "connect: Permission denied", woken
    # Positive control: the node's own user reads the snapshot the workers add up.
    with socket.socket(socket.AF_UNIX) as own:
        own.connect(str(sockets[0]))
        snapshot = own.recv(65536)
    assert snapshot.startswith(b'{"requests"'), snapshot[:80]
    _record(
        attack_report,
        "metrics-exchange-other-user",
        f"a local user (uid/gid {OUTSIDER}) connects to a worker's metrics-exchange socket, to "
        "read the node's figures or answer a scrape with forged ones, and to the socket that "
        "wakes the revocation sender",
        "the sockets live in a directory of mode 0700 of the node's user: both connects "
        "refused (Permission denied); the node's own user gets the worker's JSON snapshot",
        "refused",
    )


def test_refused_a_proxy_whose_pin_a_reload_withdrew(
    deployment: Deployment, attack_report: AttackReport, tmp_path: Path
) -> None:
    d = deployment
    pki = make_proxy_pki(tmp_path / "proxy-pki")
    pin = fingerprint_sha256(load_certificates_pem(pki.cert.read_bytes())[0])
    node_toml = d.node_dir / "node.toml"
    original = node_toml.read_text()
    port = d.node.port
    try:
        d.cli(
            "node",
            "set-proxy",
            "--dir",
            str(d.node_dir),
            "--proxy-ca",
            str(pki.ca),
            "--trusted-proxy",
            "127.0.0.1",
            "--proxy-fingerprint",
            f"sha256:{pin}",
        )
        d.node.stop()
        node = d.serve_node(port=port, extra=("--proxy-listen", "127.0.0.1:0"))
        lines = [x for x in node.log().splitlines() if x.startswith("proxy listening on ")]
        proxy = ("127.0.0.1", int(lines[0].rpartition(":")[2]))
        context = https_context(
            key=decode_pkcs8(pki.key.read_bytes(), passphrase=None),
            chain=load_certificates_pem(pki.cert.read_bytes()),
            anchors=d.node_anchors,
        )
        pinned = https_request(proxy, "GET", "/.well-known/est/cacerts", context=context)
        assert pinned.status == 200, pinned.summary()
        before = d.snapshot()
        # The operator withdraws the pin (another proxy's certificate is pinned instead).
        table = tomllib.loads(node_toml.read_text())
        table["proxy"]["fingerprints"] = ["sha256:" + "ab" * 32]
        node_toml.write_text(tomli_w.dumps(table))
        workers = len(child_pids(node.pid))
        os.kill(node.pid, signal.SIGHUP)
        assert wait_until(
            lambda: node.log().count("reloaded [proxy]") == workers + 1, timeout=60
        ), node.log()
        attempts = [
            https_request(proxy, "GET", "/.well-known/est/cacerts", context=context)
            for _ in range(2 * workers)
        ]
        assert all(a.status is None for a in attempts), [a.summary() for a in attempts]
        assert "is not one of [proxy] fingerprints" in node.log()
        unchanged = d.check_unchanged(before, unaudited_because="no device was named")
    finally:
        node_toml.write_text(original)
        d.node.stop()
        d.serve_node(port=port)
    _record(
        attack_report,
        "proxy-pin-withdrawn-by-reload",
        f"a proxy (TLS client certificate under [proxy] ca, pinned) keeps connecting to the "
        f"proxy listener of the supervised node ({workers} workers) after the operator pinned "
        "another certificate instead and sent SIGHUP, without a restart",
        f"served (200) while pinned; after the reload, {len(attempts)} of {len(attempts)} new "
        f"connections closed right after the handshake (no HTTP answer), in every worker; "
        f"{unchanged}",
        "refused",
    )
