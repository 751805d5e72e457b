"""The client certificate as a TLS-terminating proxy forwards it, on the node's proxy listener.

In a scale-out deployment a proxy (nginx, HAProxy, a load balancer) terminates the devices'
TLS and forwards each request to the node's proxy listener (ztpki.node.proxy_listener: TLS
with the proxy's own client certificate, or a Unix socket), with the client's certificate in a
header: PEM, URL-escaped as nginx's ``$ssl_client_escaped_cert`` writes it. The proxy is
trusted only to say which certificate the client proved possession of; the authentication
module verifies the chain again exactly as for a certificate taken from TLS.

On a TCP listener the header is believed only from a peer address in ``[proxy] trusted`` (the
second fence, after the proxy's certificate); from anyone else it is ignored (the request has
no client certificate) and logged. On a Unix socket the socket's permissions are the fence. A
trusted proxy that sends a garbled header gets 400: that is a proxy misconfiguration, never a
reason to guess.
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import unquote

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from ztpki.errors import MalformedInput
from ztpki.node.proxy_config import ProxyConfig
from ztpki.pki.pem import load_certificates_pem
from ztpki.throttle import LogThrottle

log = logging.getLogger(__name__)
# Any process that reaches the listener can send the header: its warnings at a bounded rate.
_IGNORED = LogThrottle(log)

# An escaped PEM leaf is about 1 KiB (EC) to 2.5 KiB (RSA-4096); a chain or anything larger
# is not what the header is for.
MAX_HEADER = 8192

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def decode_forwarded_certificate(value: str) -> bytes:
    """The DER of the one certificate in a URL-escaped PEM header value."""
    if len(value) > MAX_HEADER:
        raise MalformedInput(
            f"the proxy's client-certificate header is over {MAX_HEADER} characters"
        )
    # unquote, not unquote_plus: '+' is a base64 character, and nginx escapes it anyway.
    try:
        text = unquote(value.strip(), errors="strict")
    except UnicodeDecodeError:
        text = "\ufffd"
    if not text.isascii() or "-----BEGIN CERTIFICATE-----" not in text:
        raise MalformedInput(
            "the proxy's client-certificate header is not a URL-escaped PEM certificate"
        )
    try:
        certificates = load_certificates_pem(text.encode("ascii"))
    except MalformedInput:
        raise MalformedInput(
            "the proxy's client-certificate header holds no valid PEM certificate"
        ) from None
    if len(certificates) != 1:
        raise MalformedInput(
            "the proxy's client-certificate header must hold exactly one certificate (the leaf)"
        )
    return certificates[0].public_bytes(serialization.Encoding.DER)


def peer_address(request: web.BaseRequest) -> Address | None:
    """The TCP peer of the connection (never a Forwarded or X-Forwarded-For header)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        return ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return None


class ForwardedCertificate:
    """Takes the client certificate (DER) from the proxy header of a trusted peer.

    ``address_fence`` is off only on a Unix socket, which has no peer address."""

    def __init__(self, config: ProxyConfig, *, address_fence: bool = True) -> None:
        self.config = config
        self.address_fence = address_fence

    def __call__(self, request: web.BaseRequest) -> bytes | None:
        values = request.headers.getall(self.config.header, [])
        if not values:
            return None
        address = peer_address(request)
        if self.address_fence and (address is None or not self.config.trusts(address)):
            _IGNORED.warning(
                "ignored-header",
                "ignored the %s header from %s, which is not a trusted proxy ([proxy] trusted); "
                "the request counts as having no client certificate",
                self.config.header,
                address or "an unknown peer",
            )
            return None
        if len(values) != 1:
            raise MalformedInput(f"the proxy sent the {self.config.header} header more than once")
        try:
            return decode_forwarded_certificate(values[0])
        except MalformedInput as exc:
            log.warning(
                "refused a request from proxy %s: %s", address or "on the socket", exc.message
            )
            raise
