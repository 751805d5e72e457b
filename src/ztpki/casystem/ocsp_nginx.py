"""The nginx configuration that serves ``ztpki ca serve --ocsp-dir DIR``'s files.

One text, used by the README recipe, the end-to-end test and the benchmark, so the three
cannot drift apart. nginx answers ``GET /ocsp/<base64>`` from ``DIR/NAME/`` (the file names
are nginx's decoded, slash-merged ``$uri``: casystem.ocsp_presign) and hands anything else
under /ocsp, and /crl, to the responder over kept-alive upstream connections: POST, nonces,
SHA-256 CertIDs and certificates with no file yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Shorter than the responder's own idle timeout (PublisherLimits.keepalive_timeout, 15 s):
# nginx drops an idle upstream connection before ztpki does, so a POST never meets a
# connection closing under it.
UPSTREAM_IDLE = "10s"

_PROXY = """proxy_pass http://ztpki_ocsp;
        proxy_http_version 1.1;
        proxy_set_header Connection "";"""


def nginx_ocsp_server(
    *,
    listen: str,
    ocsp_dir: Path,
    ca_names: Sequence[str],
    responder: str,
    max_age_hours: int,
) -> str:
    """The ``upstream`` and ``server`` blocks (for nginx's ``http`` context).

    ``responder`` is the HOST:PORT of ``ca serve --http-listen``; ``max_age_hours`` the
    smallest ``crl_next_update_hours`` of the CAs served: files carry thisUpdate as their
    time, so ``expires modified +N h`` makes Expires nextUpdate (RFC 5019 6.2).
    """
    tried = " ".join(f"/{name}/$1" for name in ca_names)
    tried_dir = " ".join(f"/{name}/$1_" for name in ca_names)
    static = f"""root {ocsp_dir};
        types {{ }}
        default_type application/ocsp-response;
        expires modified +{max_age_hours}h;
        add_header Cache-Control "public, no-transform, must-revalidate";"""
    return f"""
upstream ztpki_ocsp {{
    server {responder};
    keepalive 16;
    keepalive_timeout {UPSTREAM_IDLE};
}}
server {{
    listen {listen};
    # merge_slashes stays on (the default): the file names are the merged paths.
    location ~ "^/ocsp/([A-Za-z0-9+/=]*[A-Za-z0-9+=])$" {{
        {static}
        try_files {tried} @ztpki;
    }}
    # A base64 ending in "/": its file is "_" in that directory.
    location ~ "^/ocsp/([A-Za-z0-9+/=]+/)$" {{
        {static}
        try_files {tried_dir} @ztpki;
    }}
    location /ocsp {{
        {_PROXY}
    }}
    location /crl/ {{
        {_PROXY}
    }}
    location @ztpki {{
        {_PROXY}
    }}
    location / {{
        return 404;
    }}
}}
"""


def nginx_main_conf(prefix: Path, server: str, *, workers: int = 1) -> str:
    """A whole nginx.conf around ``server`` for a private instance under ``prefix`` (its
    pid, logs and temporary files in ``prefix/tmp``, which the caller creates), in the
    foreground: what the tests and benchmark run."""
    temp = prefix / "tmp"
    return f"""
daemon off;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{server}
}}
"""


__all__ = ["nginx_main_conf", "nginx_ocsp_server"]
