"""A private nginx on loopback for the end-to-end tests, run from the configuration files that
operators deploy: deploy/nginx/ztpki-node.conf rendered (its @PLACEHOLDERS@ replaced), inside
the small nginx.conf of a private instance (ztpki.casystem.ocsp_nginx.nginx_main_conf).

nginx inherits its listening sockets (its NGINX environment variable, as in a binary upgrade):
connections queue from the start, so there is no port race and no readiness poll. It runs in
its own session, as a master and one worker (`daemon off;`; it segfaults on an inherited
socket with `master_process off`)."""

from __future__ import annotations

import grp
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ztpki.casystem.ocsp_nginx import nginx_main_conf

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NODE_SITE = DEPLOY / "nginx" / "ztpki-node.conf"
WORKER_GROUP = grp.getgrgid(65534).gr_name  # nogroup: the group nginx's worker runs in as root
PLACEHOLDER = re.compile(r"@([A-Z][A-Z_]*)@")


class RenderError(ValueError):
    """A deploy template and its values do not match (a placeholder left or unknown)."""


def placeholders(template: Path) -> set[str]:
    """The @NAME@ placeholders of a template, outside its comments."""
    return {
        name
        for line in template.read_text().splitlines()
        for name in PLACEHOLDER.findall(line.split("#", 1)[0])
    }


def render(template: Path, values: Mapping[str, object]) -> str:
    """The template with every @NAME@ outside its comments replaced by values[NAME]; a
    placeholder without a value, or a value without a placeholder, is an error: the template
    and its callers cannot drift apart."""
    wanted = placeholders(template)
    missing, unknown = wanted - set(values), set(values) - wanted
    if missing or unknown:
        raise RenderError(
            f"{template.name}: no value for {sorted(missing)}, no placeholder for {sorted(unknown)}"
        )
    lines = []
    for line in template.read_text().splitlines(keepends=True):
        code, hash_, comment = line.partition("#")
        code = PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), code)
        lines.append(code + hash_ + comment)
    return "".join(lines)


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def write_nginx_conf(prefix: Path, site: str) -> Path:
    """prefix/nginx.conf around an http-context site configuration; as root the worker runs
    as nobody:nogroup (a group a Unix socket can be given to)."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    user = f"user nobody {WORKER_GROUP};\n" if os.getuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(user + nginx_main_conf(prefix, site))
    return conf


def check_nginx_conf(conf: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on conf (its prefix is conf's directory)."""
    assert NGINX is not None
    prefix = conf.parent
    return subprocess.run(
        [NGINX, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )


def start_nginx(conf: Path, sockets: Sequence[socket.socket]) -> subprocess.Popen[bytes]:
    """nginx -p conf's directory, listening on the given sockets, which are closed here: if
    nginx dies, connections are refused, not queued."""
    assert NGINX is not None
    prefix = conf.parent
    fds = "".join(f"{s.fileno()};" for s in sockets)
    try:
        with (prefix / "stderr.log").open("wb") as err:
            return subprocess.Popen(
                [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "NGINX": fds},
                pass_fds=tuple(s.fileno() for s in sockets),
                start_new_session=True,
            )
    finally:
        for sock in sockets:
            sock.close()


def stop_nginx(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: master and worker
        process.wait()
