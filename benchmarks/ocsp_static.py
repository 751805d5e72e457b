"""benchmarks/ocsp.py's nginx side: pre-signed files served by nginx, asked with RFC 5019 GETs."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509 import ocsp

from ztpki.casystem.ocsp_nginx import nginx_main_conf, nginx_ocsp_server
from ztpki.casystem.ocsp_presign import file_name
from ztpki.store.records import RevocationReason


def get_paths(bodies: Sequence[bytes]) -> list[tuple[str, str, bytes | None]]:
    """RFC 5019 GETs of the same requests: /ocsp/<base64, URL-escaped>."""
    return [
        ("GET", "/ocsp/" + urllib.parse.quote(base64.b64encode(b).decode(), safe=""), None)
        for b in bodies
    ]


def check_static(
    port: int,
    requests: Sequence[bytes],
    certificates: Sequence[x509.Certificate],
    revocations: dict[int, tuple[datetime, RevocationReason]],
) -> None:
    """nginx serves the files themselves (Accept-Ranges only from its file handler), and they
    say what the store says: revoked and good serials spot-checked."""
    for n in [*range(5), *range(len(requests) - 5, len(requests))]:
        ((method, path, _),) = get_paths([requests[n]])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request(method, path)
        reply = connection.getresponse()
        body = reply.read()
        connection.close()
        if reply.getheader("Accept-Ranges") != "bytes":
            raise RuntimeError(f"serial #{n}: nginx did not serve a pre-signed file")
        revoked = revocations.get(certificates[n].serial_number)
        expected = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
        status = ocsp.load_der_ocsp_response(body).certificate_status
        if status is not expected:
            raise RuntimeError(f"serial #{n}: file says {status}, expected {expected}")


def start_nginx(
    work: Path, ocsp_dir: Path, ca_name: str, ztpki_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    """nginx on loopback with its own prefix, inheriting its listening socket (no port race)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = work / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    server = nginx_ocsp_server(
        listen=f"127.0.0.1:{port}",
        ocsp_dir=ocsp_dir,
        ca_names=[ca_name],
        responder=f"127.0.0.1:{ztpki_port}",
        max_age_hours=24,
    )
    conf = prefix / "nginx.conf"
    # The floor: nginx answering from its configuration, no file, no regex (0x30 = "0").
    floor = '    location /floor/ { return 200 "0"; }\n}\n'
    conf.write_text(nginx_main_conf(prefix, server.rstrip().removesuffix("}") + floor))
    with sock:
        process = subprocess.Popen(
            [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=(prefix / "stderr.log").open("wb"),
            env={**os.environ, "NGINX": f"{sock.fileno()};"},
            pass_fds=(sock.fileno(),),
            start_new_session=True,
        )
    return process, port


def wait_for_files(
    ocsp_dir: Path, ca_name: str, bodies: Sequence[bytes], timeout: float = 300
) -> None:
    """Until ztpki has written the pre-signed file of every request (its first sweep)."""
    paths = [ocsp_dir / ca_name / str(file_name(b)) for b in bodies]
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = sum(not p.exists() for p in paths)
            raise RuntimeError(f"{missing} pre-signed files not written after {timeout} s")
        time.sleep(0.2)
