"""The CMP handlers, by request body type: one line per message family."""

from __future__ import annotations

from ztpki.node.cmp_confirm import confirm
from ztpki.node.cmp_enroll import enroll
from ztpki.node.cmp_exchange import CmpHandler
from ztpki.protocol.cmp import BodyType

HANDLERS: dict[BodyType, CmpHandler] = {
    BodyType.IR: enroll,
    BodyType.CR: enroll,
    BodyType.P10CR: enroll,
    BodyType.KUR: enroll,
    BodyType.CERT_CONF: confirm,
}
