"""The CMP handlers, by request body type: one line per message family."""

from __future__ import annotations

from ztpki.node.cmp_confirm import confirm
from ztpki.node.cmp_enroll import enroll
from ztpki.node.cmp_exchange import CmpHandler
from ztpki.node.cmp_general import general
from ztpki.node.cmp_keygen import enroll_or_keygen
from ztpki.node.cmp_poll import poll
from ztpki.node.cmp_revoke import revoke
from ztpki.protocol.cmp import BodyType

HANDLERS: dict[BodyType, CmpHandler] = {
    BodyType.IR: enroll_or_keygen,
    BodyType.CR: enroll_or_keygen,
    BodyType.P10CR: enroll,
    BodyType.KUR: enroll,
    BodyType.CERT_CONF: confirm,
    BodyType.GENM: general,
    BodyType.RR: revoke,
    BodyType.POLL_REQ: poll,
}
