"""An operator CA and operators' client certificates, made with openssl as the README's
"Console" section shows; and a foreign CA with a certificate of the same name, which the
console must refuse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.shell import sh

OPERATOR_PKI = """
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \\
  -subj "/CN=Example operator CA" -keyout operator-ca.key -out operator-ca.pem \\
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
printf '%s\\n' basicConstraints=CA:FALSE keyUsage=critical,digitalSignature \\
  extendedKeyUsage=clientAuth > client.ext
for name in carol mallory victor; do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
    -subj "/CN=$name" -keyout $name.key -out $name.csr
  openssl x509 -req -in $name.csr -CA operator-ca.pem -CAkey operator-ca.key \\
    -CAcreateserial -days 365 -extfile client.ext -out $name.pem
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \\
  -subj "/CN=Foreign CA" -keyout foreign-ca.key -out foreign-ca.pem \\
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
  -subj "/CN=carol" -keyout foreign-carol.key -out foreign-carol.csr
openssl x509 -req -in foreign-carol.csr -CA foreign-ca.pem -CAkey foreign-ca.key \\
  -CAcreateserial -days 365 -extfile client.ext -out foreign-carol.pem
"""


@dataclass(frozen=True)
class OperatorPKI:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "operator-ca.pem"

    def cert(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of ``name``: carol, mallory, victor (operator CA) or
        foreign-carol."""
        return self.directory / f"{name}.pem", self.directory / f"{name}.key"


def make_operator_pki(directory: Path) -> OperatorPKI:
    directory.mkdir(parents=True, exist_ok=True)
    sh(OPERATOR_PKI, directory)
    return OperatorPKI(directory)
