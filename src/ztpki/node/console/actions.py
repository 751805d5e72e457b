"""The console's changes, for the ``operator`` role: block, unblock, retire, import a signed
manifest. Each is a GET of a confirmation page, then a POST with the CSRF token and
``confirm=yes``; the change itself is ztpki.node.operations', as the CLI's, with the
operator's name in its audit entry."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time

from aiohttp import web

from ztpki.node import operations
from ztpki.node.console.app import (
    CONTEXT,
    ConsoleContext,
    ConsoleRefusal,
    Staged,
    redirect,
    render,
    require_operator,
)
from ztpki.store.records import RevocationReason

log = logging.getLogger(__name__)

# An upload waits this long for its confirmation; at most MAX_STAGED wait at once.
STAGED_SECONDS = 15 * 60
MAX_STAGED = 8

ACTIONS = {
    "block": "Block",
    "unblock": "Unblock",
    "retire": "Retire",
}


def _action(request: web.Request) -> str:
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ConsoleRefusal(404, "no such action: block, unblock or retire")
    return action


async def confirm_page(request: web.Request) -> web.Response:
    require_operator(request)
    action = _action(request)
    context = request.app[CONTEXT]
    device_id = request.match_info["device_id"]
    device = await context.read(context.store.get, device_id)
    if device is None:
        raise ConsoleRefusal(404, "no device of that id is in the register")
    return render(
        request,
        "confirm.html",
        device=device,
        action=action,
        title=ACTIONS[action],
        reasons=[r.value for r in RevocationReason if r is not RevocationReason.CERTIFICATE_HOLD],
    )


async def change(request: web.Request) -> web.Response:
    session = require_operator(request)
    action = _action(request)
    context = request.app[CONTEXT]
    device_id = request.match_info["device_id"]
    form = await request.post()
    if form.get("confirm") != "yes":
        raise ConsoleRefusal(400, "confirm the change on its confirmation page first")
    now = context.clock()
    if action == "retire":
        try:
            reason = RevocationReason(str(form.get("reason", "cessationOfOperation")))
        except ValueError:
            raise ConsoleRefusal(400, "pick a revocation reason from the list") from None
        order = await asyncio.to_thread(
            operations.retire_device,
            context.directory,
            device_id,
            reason=reason,
            now=now,
            operator=session.operator,
        )
    else:
        order = await asyncio.to_thread(
            operations.set_blocked,
            context.directory,
            device_id,
            blocked=action == "block",
            now=now,
            operator=session.operator,
        )
    log.info("console: %s %s device %s", session.operator, action + "ed", device_id)
    if order is not None:
        context.revocation_queued()
    return redirect(f"/devices/{device_id}")


async def import_form(request: web.Request) -> web.Response:
    require_operator(request)
    return render(request, "import.html", result=None)


async def import_upload(request: web.Request) -> web.Response:
    """Keep the upload, verify it (a refusal is audited), show what it would list."""
    session = require_operator(request)
    context = request.app[CONTEXT]
    upload = (await request.post()).get("manifest")
    if not isinstance(upload, web.FileField):
        raise ConsoleRefusal(400, "choose the signed manifest file to upload")
    _forget_expired(context)
    token = secrets.token_urlsafe(24)
    path = context.scratch / token
    with path.open("xb") as out:
        upload.file.seek(0)
        shutil.copyfileobj(upload.file, out)
    try:
        checked = await asyncio.to_thread(
            operations.check_manifest,
            context.directory,
            path,
            now=context.clock(),
            operator=session.operator,
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    context.staged[token] = Staged(session.operator, path, time.monotonic() + STAGED_SECONDS)
    return render(
        request,
        "import_confirm.html",
        token=token,
        manifest=checked.manifest,
        device_count=checked.device_count,
        signer=checked.signer.subject.rfc4514_string(),
    )


async def import_confirm(request: web.Request) -> web.Response:
    """List the devices of an upload its operator confirmed (verified again as it streams)."""
    session = require_operator(request)
    context = request.app[CONTEXT]
    form = await request.post()
    _forget_expired(context)
    staged = context.staged.get(str(form.get("upload", "")))
    if staged is None or staged.operator != session.operator or form.get("confirm") != "yes":
        raise ConsoleRefusal(400, "upload the manifest again and confirm its import")
    del context.staged[str(form["upload"])]
    try:
        result = await asyncio.to_thread(
            operations.import_manifest,
            context.directory,
            staged.path,
            now=context.clock(),
            operator=session.operator,
        )
    finally:
        staged.path.unlink(missing_ok=True)
    log.info("console: %s imported a manifest (%s)", session.operator, result)
    return render(request, "import.html", result=result)


def _forget_expired(context: ConsoleContext) -> None:
    now = time.monotonic()
    for token, staged in list(context.staged.items()):
        if staged.expires <= now or len(context.staged) >= MAX_STAGED:
            staged.path.unlink(missing_ok=True)
            del context.staged[token]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/devices/{device_id}/{action}", confirm_page)
    app.router.add_post("/devices/{device_id}/{action}", change)
    app.router.add_get("/import", import_form)
    app.router.add_post("/import", import_upload)
    app.router.add_post("/import/confirm", import_confirm)
