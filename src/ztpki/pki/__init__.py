"""Pure PKI building blocks: keys, names, profiles, the CA, chain validation. No I/O, no clock."""

from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.chain import verify_client_chain, verify_server_chain, verify_signer_chain
from ztpki.pki.keys import (
    KeySpec,
    PrivateKey,
    PublicKey,
    decode_pkcs8,
    encode_pkcs8,
    encode_pkcs8_pem,
    generate_private_key,
    key_spec_of,
    keys_match,
)
from ztpki.pki.names import (
    SubjectFields,
    build_subject,
    check_device_id,
    device_id_of,
    serial_number_attribute,
)
from ztpki.pki.pem import (
    certificate_der,
    certificate_pem,
    certificates_pem,
    fingerprint_sha256,
    load_certificate_der,
    load_certificate_pem,
    load_certificates_pem,
    serial_hex,
)
from ztpki.pki.profiles import CertificateProfile

__all__ = [
    "CertificateAuthority",
    "CertificateProfile",
    "IssuanceGrant",
    "KeySpec",
    "PrivateKey",
    "PublicKey",
    "SubjectFields",
    "build_subject",
    "certificate_der",
    "certificate_pem",
    "certificates_pem",
    "check_device_id",
    "create_self_signed_ca",
    "decode_pkcs8",
    "device_id_of",
    "encode_pkcs8",
    "encode_pkcs8_pem",
    "fingerprint_sha256",
    "generate_private_key",
    "key_spec_of",
    "keys_match",
    "load_certificate_der",
    "load_certificate_pem",
    "load_certificates_pem",
    "serial_hex",
    "serial_number_attribute",
    "verify_client_chain",
    "verify_server_chain",
    "verify_signer_chain",
]
