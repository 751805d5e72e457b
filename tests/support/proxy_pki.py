"""A proxy CA and a proxy's TLS client certificate, made with openssl exactly as docs/node.md
shows operators ("Behind a TLS-terminating proxy"): what nginx presents to the node with
`proxy_ssl_certificate`, and what `ztpki node set-proxy --proxy-ca` trusts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.shell import sh

PROXY_PKI = """
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \\
  -subj "/CN=Example proxy CA" -keyout proxy-ca.key -out proxy-ca.pem \\
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
  -subj "/CN=nginx-1" -keyout nginx-client.key -out nginx-client.csr
printf '%s\\n' basicConstraints=CA:FALSE keyUsage=critical,digitalSignature \\
  extendedKeyUsage=clientAuth > client.ext
openssl x509 -req -in nginx-client.csr -CA proxy-ca.pem -CAkey proxy-ca.key -CAcreateserial \\
  -days 365 -extfile client.ext -out nginx-client.pem
"""


@dataclass(frozen=True)
class ProxyPKI:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "proxy-ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "nginx-client.pem"

    @property
    def key(self) -> Path:  # unencrypted, 0600 (openssl -nodes), as nginx reads it
        return self.directory / "nginx-client.key"


def make_proxy_pki(directory: Path) -> ProxyPKI:
    directory.mkdir(parents=True, exist_ok=True)
    sh(PROXY_PKI, directory)
    return ProxyPKI(directory)
