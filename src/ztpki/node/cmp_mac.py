"""MAC-based protection on the CMP front end (RFC 9483 section 4.1.5): enrolling a device that
has no factory certificate, with a shared secret the operator set for it.

What it is for: a device the customer listed in the register by hand (or whose manufacturer
ships no temporary certificate) and that the operator gave a one-off secret out of band.
Trust still comes from an explicit entitlement, never from an address: the label's policy
(``[ca.<label>] cmp_mac_protection = true``, off by default), the secret set for THIS device
(``ztpki node set-cmp-secret``, optionally bound to one label), and then the register's own
decision (listed, not blocked, not customized yet) exactly as for a temporary certificate.

The TLS client certificate is optional on the CMP path; a MAC-protected message must come
over a connection WITHOUT one: a device that holds a certificate signs with it (one request,
one identity). The device is named by senderKID (its device id); the certificate template's
subject must name the same device.

Only ir, cr, p10cr and the certConf and pollReq of their transactions are taken with a MAC:
renewing (kur), revoking (rr) and central key generation need the device's own key.

The parameters are checked against ``MacPolicy`` before anything is derived. A request whose
MAC does not verify is answered signed with the node's key, as today, and never with a MAC:
a MAC under the device's secret would let anyone who asks collect material to guess it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ztpki.node.authentication import ClientIdentity, IdentityKind
from ztpki.node.enrollment_types import LoadedLabel
from ztpki.node.register import AsyncRegister
from ztpki.pki.names import DEVICE_ID_PATTERN
from ztpki.protocol.cmp import BadMessageCheck, BodyType, CMPNotAuthorized, PKIMessage
from ztpki.protocol.cmp.mac import MacParameters, MacPolicy, decode_mac_algorithm, verify_mac
from ztpki.untrusted import quote

# The requests a shared secret may protect: an enrollment and the rest of its transaction.
MAC_BODIES = frozenset(
    {BodyType.IR, BodyType.CR, BodyType.P10CR, BodyType.CERT_CONF, BodyType.POLL_REQ}
)
POLICY = MacPolicy()


@dataclass(frozen=True)
class MacKey:
    """What the answer to a verified MAC-protected request is protected with: the same
    secret and scheme (with a fresh salt, ztpki.protocol.cmp.mac.fresh)."""

    params: MacParameters
    secret: bytes = field(repr=False)
    sender_kid: bytes
    bound_label: str | None  # the one label the secret is set for (None: any)


def shared_secret_fingerprint(device_id: str) -> str:
    """The identity's stand-in for a certificate fingerprint (the audit trail's client and a
    CMP transaction's signer): the same for every MAC-protected request of one device, never
    derived from the secret itself."""
    return hashlib.sha256(f"ztpki cmp shared secret of {device_id}".encode()).hexdigest()


async def authenticate_mac(
    register: AsyncRegister,
    message: PKIMessage,
    label: LoadedLabel,
    *,
    tls_certificate: bool,
) -> tuple[ClientIdentity, MacKey]:
    """The device a MAC-protected message proves it is, and the key to answer it with; a
    CMPError (nothing changed, no identity yet) otherwise."""
    if not label.config.cmp_mac_protection:
        raise BadMessageCheck(
            f"MAC-based protection is not enabled for label {label.name} on this node; sign "
            "the message with the device's certificate and key"
        )
    if message.body.type not in MAC_BODIES:
        raise BadMessageCheck(
            f"a {message.body.type.value} must be signed with the device's certificate; "
            "MAC-based protection is for enrolling (ir, cr, p10cr with certConf, pollReq)"
        )
    if tls_certificate:
        raise CMPNotAuthorized(
            "the connection presented a TLS client certificate: sign the CMP message with it; "
            "MAC-based protection is for a device that has no certificate"
        )
    device_id = _device_id(message.header.sender_kid)
    assert message.header.protection_alg is not None
    params = decode_mac_algorithm(message.header.protection_alg)
    POLICY.check(params)  # before the register is asked or anything derived
    stored = await register.cmp_secret(device_id)
    if stored is None:
        raise BadMessageCheck(
            "the MAC-based protection does not verify with the shared secret this node has "
            "for the device senderKID names (or it has none)"
        )
    verify_mac(message, params, stored.secret, POLICY)
    identity = ClientIdentity(
        kind=IdentityKind.SHARED_SECRET,
        device_id=device_id,
        fingerprint=shared_secret_fingerprint(device_id),
        serial="",
        certificate=None,
    )
    key = MacKey(params, stored.secret, message.header.sender_kid or b"", stored.label)
    return identity, key


def check_secret_label(identity: ClientIdentity, label: LoadedLabel, key: MacKey) -> None:
    """A secret set for one label is good for that label only (an audited refusal)."""
    bound = key.bound_label
    if bound is not None and bound != label.name:
        raise CMPNotAuthorized(
            f"the shared secret of device {identity.device_id} is set for label {bound}; "
            f"enroll at /.well-known/cmp/p/{bound}"
        )


def _device_id(sender_kid: bytes | None) -> str:
    if not sender_kid:
        raise BadMessageCheck(
            "a MAC-protected message names its device in senderKID (openssl cmp -ref DEVICE)"
        )
    try:
        device_id = sender_kid.decode("ascii")
    except UnicodeDecodeError:
        device_id = ""
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise BadMessageCheck(
            f"senderKID {quote(sender_kid)} is not a device id (1-64 of A-Z a-z 0-9 . _ -)"
        )
    return device_id
