"""genm -> genp (RFC 9483 section 4.3): what a device may ask the node outside an enrollment.

    id-it-caCerts      the label's CA certificates (section 4.3.1), as EST's cacerts; a genm
                       protected by an operational certificate confirms it, as cacerts does
    id-it-rootCaCert   root CA update (section 4.3.2): the device names the root it trusts;
                       when the label's certificates hold a key rollover away from it (`ztpki
                       ca rollover`, exported with the chain), the answer
                       (id-it-rootCaKeyUpdate) carries newWithNew, newWithOld and oldWithNew;
                       for the current root it carries no value; any other root is refused

Any other infoType is refused (badRequest) with the list of those served, so a device learns
what to ask instead of getting an empty answer it cannot tell from "nothing to say".
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyasn1_alt_modules import rfc5280, rfc9480

from ztpki.node.cmp_exchange import CmpExchange, CmpReply
from ztpki.pki.asn1 import decode_der, encode_der
from ztpki.pki.rollover import find_update, is_self_signed
from ztpki.protocol.cmp import BadDataFormat, BadRequest, BodyType, GenMsgBody, InfoTypeAndValue
from ztpki.protocol.cmp.root_update import (
    ID_IT_ROOT_CA_CERT,
    ID_IT_ROOT_CA_KEY_UPDATE,
    RootUpdateValue,
    encode_root_update,
)

ID_IT_CA_CERTS = "1.3.6.1.5.5.7.4.17"
SERVED = {ID_IT_CA_CERTS: "caCerts", ID_IT_ROOT_CA_CERT: "rootCaCert"}


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _certificate_value(certificate: x509.Certificate) -> rfc5280.Certificate:
    return decode_der(
        certificate.public_bytes(serialization.Encoding.DER),
        rfc5280.Certificate(),
        what="a CA certificate",
        ours=True,
    )


def ca_certs_value(chain: tuple[x509.Certificate, ...]) -> bytes:
    """CaCertsValue: SEQUENCE SIZE (1..MAX) OF CMPCertificate."""
    value = rfc9480.CaCertsValue()
    for certificate in chain:
        value.append(_certificate_value(certificate))
    return encode_der(value)


def root_update_value(asked: bytes | None, chain: tuple[x509.Certificate, ...]) -> bytes | None:
    """RootCaKeyUpdateValue for a device that trusts the root in ``asked``: the rollover away
    from it (newWithNew, newWithOld, oldWithNew) when the label's certificates hold one, None
    when it is the current root. A root the label does not serve is refused."""
    if asked is None:
        raise BadRequest("rootCaCert must name the root CA certificate the device trusts")
    try:
        old = x509.load_der_x509_certificate(asked)
    except ValueError:
        raise BadDataFormat("rootCaCert's value is not a DER certificate") from None
    if old not in chain or not is_self_signed(old):
        raise BadRequest(
            f"rootCaCert names a root this node does not serve ({old.subject.rfc4514_string()}); "
            "ask with the root CA certificate the device was given"
        )
    update = find_update(old, chain)
    if update is None:
        return None  # the current root: no update (RFC 9483 4.3.2, an absent value)
    return encode_root_update(
        RootUpdateValue(
            _der(update.new_with_new),
            _der(update.new_with_old),
            None if update.old_with_new is None else _der(update.old_with_new),
        )
    )


async def general(exchange: CmpExchange) -> CmpReply:
    body = exchange.message.body
    assert isinstance(body, GenMsgBody)
    asked = body.items or (InfoTypeAndValue(ID_IT_CA_CERTS),)
    unknown = sorted({i.oid for i in asked} - SERVED.keys())
    if unknown:
        served = ", ".join(f"{name} ({oid})" for oid, name in SERVED.items())
        raise BadRequest(f"infoType {', '.join(unknown)} is not served here; ask for {served}")
    # An operational certificate asking for the CA certificates confirms itself, as EST's
    # cacerts does: the device's first message after a certConf that never arrived.
    chain = await exchange.service.cacerts(exchange.label, exchange.identity)
    items = []
    for item in asked:
        if item.oid == ID_IT_CA_CERTS:
            items.append(InfoTypeAndValue(ID_IT_CA_CERTS, ca_certs_value(chain)))
        else:
            value = root_update_value(item.value, chain)
            items.append(InfoTypeAndValue(ID_IT_ROOT_CA_KEY_UPDATE, value))
    return CmpReply(GenMsgBody(BodyType.GENP, tuple(items)))
