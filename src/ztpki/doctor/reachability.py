"""Whether a CA system answers at its address with a TLS identity the CA-client trusts.

No client certificate is presented (its key is encrypted and the doctor asks for no
passphrase): a TLS 1.3 client finishes its side of the handshake before the server judges the
client, so a completed handshake proves the address is live and the server is the CA system
the credential's anchors name. TLS 1.2-only servers refuse the handshake instead, which the
message says.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence

from cryptography import x509

from ztpki.credentials import client_context
from ztpki.doctor.findings import Finding, error, ok

PROBE_TIMEOUT = 5.0


def probe_ca_system(
    address: tuple[str, int],
    anchors: Sequence[x509.Certificate],
    *,
    set_command: str,
    timeout: float = PROBE_TIMEOUT,
) -> Finding:
    host, port = address
    subject = f"CA system {host}:{port}"
    context = client_context(key=None, chain=(), server_anchors=anchors)
    started = time.perf_counter()
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            elapsed = time.perf_counter() - started
    except ssl.SSLCertVerificationError as exc:
        return error(
            "reachability",
            subject,
            f"answers, but its TLS certificate is not one the CA-client trusts "
            f"({exc.verify_message})",
            "check the address, or issue the CA-client a new credential from this CA system "
            "(ztpki ca add-client --out DIR --force) and copy it to the node",
        )
    except ssl.SSLError as exc:
        return error(
            "reachability",
            subject,
            f"TLS handshake failed ({exc.reason})",
            "check that the address is a ztpki CA system (`ztpki ca serve --listen`)",
        )
    except (OSError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        return error(
            "reachability",
            subject,
            f"unreachable: {reason}",
            f"start `ztpki ca serve` there, or correct the address ({set_command})",
        )
    return ok("reachability", subject, f"answers, TLS identity verified, {elapsed * 1000:.0f} ms")
