"""Reading the PBES2 parameters back out of an encrypted PKCS#8 PEM (what a key file's
encryption really is), with the OIDs ztpki writes."""

from __future__ import annotations

import base64

from ztpki.pki.der import oid_text, read_tlv

PBES2 = "1.2.840.113549.1.5.13"
PBKDF2 = "1.2.840.113549.1.5.12"
HMAC_SHA256 = "1.2.840.113549.2.9"
AES256_CBC = "2.16.840.1.101.3.4.1.42"


def pbes2_parameters(pem: bytes) -> tuple[str, str, int, str, str]:
    """(scheme, kdf, rounds, prf, cipher) OIDs and count of an encrypted PKCS#8 PEM."""
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    der = base64.b64decode(body)

    def children(at: int, stop: int) -> list[tuple[int, int, int]]:
        found = []
        while at < stop:
            item, at = read_tlv(der, at, stop=stop)
            found.append((item.tag, item.start, item.end))
        return found

    (outer,) = children(0, len(der))
    algorithm, _data = children(outer[1], outer[2])
    scheme_oid, params = children(algorithm[1], algorithm[2])
    kdf, cipher = children(params[1], params[2])
    kdf_oid, kdf_params = children(kdf[1], kdf[2])
    _salt, rounds, *rest = children(kdf_params[1], kdf_params[2])
    prf_oid = children(rest[-1][1], rest[-1][2])[0]
    cipher_oid = children(cipher[1], cipher[2])[0]

    def oid(item: tuple[int, int, int]) -> str:
        return oid_text(der[item[1] : item[2]])

    count = int.from_bytes(der[rounds[1] : rounds[2]], "big")
    return oid(scheme_oid), oid(kdf_oid), count, oid(prf_oid), oid(cipher_oid)
