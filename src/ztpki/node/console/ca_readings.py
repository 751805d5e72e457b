"""What the health page reads from a CA system's HTTP listener (``ca serve --http-listen``):
its ``/metrics`` (certificates issued and revoked per CA) and each customer CA's CRL.

Every read is bounded by the caller's session timeout and turns every failure into a sentence
on the page; nothing read here is trusted further than the page: a CRL counts only when its
signature verifies under the CA certificate the node holds for that label.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

# A CRL or a metrics page past this is no answer of a CA system's listener (a CRL of a
# million revoked certificates is about 40 MB).
MAX_BODY = 64 * 1024 * 1024
ISSUED = "ztpki_ca_certificates_issued_total"
REVOKED = "ztpki_ca_certificates_revoked_total"


@dataclass(frozen=True)
class MetricsReading:
    """One listener's counters (each instance counts since its own start)."""

    source: str
    issued: dict[str, int] = field(default_factory=dict)
    revoked: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class CRLStatus:
    """A customer CA's CRL as one listener serves it (None fields: not read)."""

    ca: str
    location: str
    this_update: datetime | None = None
    next_update: datetime | None = None
    revoked: int | None = None
    number: int | None = None
    error: str | None = None


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url, allow_redirects=False) as answer:
        if answer.status != 200:
            raise _Unreadable(f"HTTP {answer.status} {answer.reason or ''}".strip())
        body = await answer.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise _Unreadable(f"over {MAX_BODY // (1024 * 1024)} MiB")
    return body


class _Unreadable(Exception):
    """A read that failed, with the sentence the page shows."""


def _failure(exc: BaseException) -> str:
    if isinstance(exc, _Unreadable):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout: no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"unreachable: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}"[:200]


async def read_metrics(session: aiohttp.ClientSession, base: str) -> MetricsReading:
    url = f"{base}/metrics"
    try:
        text = (await _get(session, url)).decode("utf-8", errors="replace")
        issued: dict[str, int] = {}
        revoked: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                into = {ISSUED: issued, REVOKED: revoked}.get(sample.name)
                ca = sample.labels.get("ca")
                if into is not None and ca is not None:
                    into[ca] = into.get(ca, 0) + int(sample.value)
    except (aiohttp.ClientError, TimeoutError, _Unreadable, ValueError) as exc:
        log.info("console: cannot read %s: %s", url, _failure(exc))
        return MetricsReading(url, error=_failure(exc))
    return MetricsReading(url, issued, revoked)


async def read_crl(
    session: aiohttp.ClientSession,
    url: str,
    ca: str,
    issuer: x509.Certificate,
    *,
    seen: dict[str, tuple[bytes, CRLStatus]] | None = None,
) -> CRLStatus:
    """The CRL at ``url`` judged against ``issuer``. A CRL of a large fleet is megabytes: it
    is parsed and verified on a worker thread (this loop serves the devices too), and only
    when its bytes changed since the last read (``seen``: digest and status, by URL)."""
    try:
        body = await _get(session, url)
    except (aiohttp.ClientError, TimeoutError, _Unreadable) as exc:
        return CRLStatus(ca, url, error=_failure(exc))
    digest = hashlib.sha256(body).digest()
    known = None if seen is None else seen.get(url)
    if known is not None and known[0] == digest:
        return known[1]
    status = await asyncio.to_thread(judge_crl, body, url, ca, issuer)
    if seen is not None:
        seen[url] = (digest, status)
    return status


def judge_crl(body: bytes, url: str, ca: str, issuer: x509.Certificate) -> CRLStatus:
    try:
        crl = x509.load_der_x509_crl(body)
        verified = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return CRLStatus(ca, url, error="not a DER CRL")
    if not verified or crl.issuer != issuer.subject:
        return CRLStatus(ca, url, error=f"not signed by CA {ca} as this node knows it")
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = None
    return CRLStatus(
        ca,
        url,
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        revoked=len(crl),
        number=number,
    )
