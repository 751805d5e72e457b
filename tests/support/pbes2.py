"""Reading the PBES2 parameters back out of an encrypted PKCS#8 PEM (what a key file's
encryption really is), with the OIDs ztpki writes."""

from __future__ import annotations

import base64

from pyasn1.codec.der import decoder
from pyasn1_alt_modules import rfc5958, rfc8018

PBES2 = "1.2.840.113549.1.5.13"
PBKDF2 = "1.2.840.113549.1.5.12"
HMAC_SHA256 = "1.2.840.113549.2.9"
AES256_CBC = "2.16.840.1.101.3.4.1.42"


def pbes2_parameters(pem: bytes) -> tuple[str, str, int, str, str]:
    """(scheme, kdf, rounds, prf, cipher) OIDs and count of an encrypted PKCS#8 PEM."""
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    info, _ = decoder.decode(base64.b64decode(body), asn1Spec=rfc5958.EncryptedPrivateKeyInfo())
    algorithm = info["encryptionAlgorithm"]
    scheme, _ = decoder.decode(algorithm["parameters"], asn1Spec=rfc8018.PBES2_params())
    kdf = scheme["keyDerivationFunc"]
    kdf_params, _ = decoder.decode(kdf["parameters"], asn1Spec=rfc8018.PBKDF2_params())
    return (
        str(algorithm["algorithm"]),
        str(kdf["algorithm"]),
        int(kdf_params["iterationCount"]),
        str(kdf_params["prf"]["algorithm"]),
        str(scheme["encryptionScheme"]["algorithm"]),
    )
