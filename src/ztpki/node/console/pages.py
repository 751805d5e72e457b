"""The console's reading pages: overview (and its live fragment), devices, one device, the
audit trail, the CA systems' health. Every list is bounded and paginated on the server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography import x509

from ztpki.node.console.app import CONTEXT, ConsoleContext, ConsoleRefusal, render
from ztpki.node.console.health import age, stale
from ztpki.store.records import AuditEntry, DeviceState
from ztpki.store.sqlite_console import DeviceFilter

PAGE = 50
AUDIT_PAGE = 100
CHART_MINUTES = 60
# The audit trail's words for a customization that ended, and for a refused or deferred one.
CUSTOMIZED = "confirmed"
FAILURES = ("refused", "deferred")


@dataclass(frozen=True)
class Bar:
    minute: str
    count: int
    x: int
    height: int


def _bars(per_minute: Mapping[str, int], now: datetime) -> tuple[list[Bar], int]:
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES - 1)
    minutes = [(start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M") for i in range(60)]
    peak = max([per_minute.get(m, 0) for m in minutes] + [1])
    return [
        Bar(m, per_minute.get(m, 0), i * 10, round(100 * per_minute.get(m, 0) / peak))
        for i, m in enumerate(minutes)
    ], peak


async def _live(context: ConsoleContext) -> dict[str, Any]:
    """The overview's live figures. They cost about 0.7 s of queries on a million devices
    (benchmarks/console_pages.py), so every request that comes while they are computed gets
    that computation's result: open browsers never run them more than one at a time."""
    running = context.live
    if running is None or running.done():
        running = context.live = asyncio.ensure_future(_compute_live(context))
    return await asyncio.shield(running)


async def _compute_live(context: ConsoleContext) -> dict[str, Any]:
    now = context.clock()
    since = now - timedelta(minutes=CHART_MINUTES)
    counts = await context.read(context.store.counts)
    per_minute = await context.read(context.store.decisions_per_minute, CUSTOMIZED, since=since)
    failures = await context.read(context.store.failure_reasons, FAILURES, since=since)
    bars, peak = _bars(per_minute, now)
    grouped: dict[tuple[str, str], dict[DeviceState, int]] = {}
    for maker, batch, state, count in await context.read(context.store.fleet_by_batch):
        grouped.setdefault((maker or "—", batch or "—"), {})[state] = count
    return {
        "batches": grouped,
        "counts": counts,
        "total": sum(counts.values()),
        "bars": bars,
        "peak": peak,
        "last_hour": sum(bar.count for bar in bars),
        "failures": failures,
        "now": now,
    }


async def overview(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    live = await _live(context)
    return render(request, "overview.html", states=list(DeviceState), **live)


async def overview_live(request: web.Request) -> web.Response:
    """The live part of the overview, as an HTML fragment the page's script swaps in."""
    live = await _live(request.app[CONTEXT])
    return render(request, "live.html", states=list(DeviceState), **live)


def _filter(query: Mapping[str, str]) -> DeviceFilter:
    def text(name: str) -> str | None:
        value = query.get(name, "").strip()
        return value[:128] or None

    state = text("state")
    blocked = text("blocked")
    try:
        return DeviceFilter(
            search=(text("q") or "")[:128],
            state=None if state is None else DeviceState(state),
            batch=text("batch"),
            label=text("label"),
            blocked=None if blocked is None else {"yes": True, "no": False}[blocked],
        )
    except (ValueError, KeyError):
        raise ConsoleRefusal(400, "unknown filter value: pick one from the form") from None


async def devices(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    where = _filter(request.query)
    after = request.query.get("after", "")[:256]
    rows = await context.read(context.store.device_page, where, after=after, limit=PAGE + 1)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    kept = {k: v for k, v in request.query.items() if k != "after" and v}
    return render(
        request,
        "devices.html",
        rows=rows,
        where=where,
        states=list(DeviceState),
        labels=[ca.label for ca in context.config.labels],
        query=kept,
        after=after,
        next_after=rows[-1].device_id if more and rows else None,
    )


@dataclass(frozen=True)
class Identity:
    kind: str
    serial: str | None
    fingerprint: str | None
    at: datetime | None
    status: str


def _history(device: Any, entries: list[AuditEntry], orders: list[Any]) -> list[Identity]:
    by_serial: dict[str, str] = {}
    for order in orders:  # oldest first: the last order on a serial is its status
        if order.action.value == "release":
            word = "hold released"
        elif order.reason == "certificateHold":
            word = "on hold"
        else:
            word = f"revoked ({order.reason})"
        by_serial[order.serial] = f"{word}, order {order.status.value}"
    history = [
        Identity("temporary (factory)", None, device.temp_fingerprint, None, "birth identity")
    ]
    issued = [e for e in entries if e.decision == "issued" and e.serial]
    for number, entry in enumerate(issued):
        kind = "operational" if number == 0 else f"renewal {number}"
        current = entry.serial == device.issued_serial
        fingerprint = None
        if current and device.issued_certificate_der:
            fingerprint = hashlib.sha256(device.issued_certificate_der).hexdigest()
        status = by_serial.get(entry.serial or "", "live" if current else "superseded")
        history.append(Identity(kind, entry.serial, fingerprint, entry.at, status))
    return history


async def device(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    device_id = request.match_info["device_id"]
    found = await context.read(context.store.get, device_id)
    if found is None:
        raise ConsoleRefusal(404, "no device of that id is in the register")
    entries = await context.read(lambda: list(context.store.entries(device_id=device_id)))
    orders = await context.read(context.store.revocations, device_id=device_id)
    not_after = None
    if found.issued_certificate_der:
        not_after = x509.load_der_x509_certificate(found.issued_certificate_der).not_valid_after_utc
    return render(
        request,
        "device.html",
        device=found,
        history=_history(found, entries, orders),
        entries=entries[-200:],
        orders=orders,
        not_after=not_after,
    )


async def audit(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    before_text = request.query.get("before")
    try:
        before = None if before_text is None else int(before_text)
    except ValueError:
        raise ConsoleRefusal(400, "before must be an entry number") from None
    entries = await context.read(context.store.audit_page, before=before, limit=AUDIT_PAGE)
    verified = await context.verify_audit()
    return render(
        request,
        "audit.html",
        entries=entries,
        verified_at=None if verified is None else verified[0],
        verification=None if verified is None else verified[1],
        next_before=entries[-1].seq if entries and entries[-1].seq > 1 else None,
    )


async def health(request: web.Request) -> web.Response:
    """The last CA health report (made in the background, ztpki.node.console.health), with
    the register's own figures and the factory CRLs this process holds."""
    context = request.app[CONTEXT]
    report, report_age = (None, None)
    if context.health is not None:
        report, report_age = await context.health.report()
    issued = await context.read(context.store.issued_by_label)
    orders = await context.read(context.store.revocations, open_only=True)
    crls = [] if context.factory_crls is None else context.factory_crls.freshness()
    return render(
        request,
        "health.html",
        report=report,
        report_age=report_age,
        ca_issued={} if report is None else report.issued(),
        ca_revoked={} if report is None else report.revoked(),
        crls=crls,
        now=context.clock(),
        age=age,
        stale=stale,
        ca_http=context.config.console.ca_http,
        addresses=context.config.ca_systems,
        unconfigured=[] if context.factory_crls is None else context.factory_crls.unconfigured(),
        labels=context.config.labels,
        issued=issued,
        open_orders=len(orders),
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", overview)
    app.router.add_get("/live", overview_live)
    app.router.add_get("/devices", devices)
    app.router.add_get("/devices/{device_id}", device)
    app.router.add_get("/audit", audit)
    app.router.add_get("/health", health)
