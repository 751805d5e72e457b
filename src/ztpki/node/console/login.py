"""Logging in (password, argon2) and out; the throttle answers 429 to a name or address that
failed too often. Failures never say whether the name exists."""

from __future__ import annotations

import hmac
import logging
import re
import secrets

from aiohttp import web

from ztpki.node.console.app import (
    CONTEXT,
    ConsoleRefusal,
    peer_common_name,
    redirect,
    render,
    set_session_cookie,
)
from ztpki.node.console.passwords import MAX_PASSWORD, verify_password
from ztpki.node.console.sessions import COOKIE

log = logging.getLogger(__name__)


# Login CSRF (a forged form logging the victim in as the attacker): the login form carries a
# random token that must equal the one in this SameSite=Strict cookie (double submit).
LOGIN_COOKIE = "__Host-ztpki_login"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


async def login_form(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    if await context.read(context.sessions.find, request.cookies.get(COOKIE)) is not None:
        return redirect("/")
    return _login_page(request, error=None, name="")


def _login_page(
    request: web.Request, *, error: str | None, name: str, status: int = 200
) -> web.Response:
    context = request.app[CONTEXT]
    # The browser's token stays while it has one: a second login page (another tab, or the
    # favicon's redirect here) must not invalidate the form already shown.
    kept = request.cookies.get(LOGIN_COOKIE, "")
    token = kept if _TOKEN.fullmatch(kept) else secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status=status,
        error=error,
        name=name,
        login_token=token,
        certificate=context.config.console.operator_ca is not None,
        presented=peer_common_name(request),
    )
    response.set_cookie(
        LOGIN_COOKIE, token, path="/", secure=True, httponly=True, samesite="Strict", max_age=3600
    )
    return response


def _login_token_matches(request: web.Request, presented: object) -> bool:
    kept = request.cookies.get(LOGIN_COOKIE)
    return (
        isinstance(presented, str)
        and kept is not None
        and hmac.compare_digest(presented.encode(), kept.encode())
    )


async def login(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    form = await request.post()
    name, password = form.get("name"), form.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        raise ConsoleRefusal(400, "the login form needs a name and a password")
    name = name.strip()[:64]
    if not _login_token_matches(request, form.get("login_token")):
        raise ConsoleRefusal(
            403, "this login form is stale or did not come from the console; reload and retry"
        )
    address = request.remote or "unknown"
    if context.throttle.blocked(name, address):
        wait = context.throttle.retry_after(name, address)
        log.warning("console: login of %r from %s throttled", name, address)
        response = _login_page(
            request,
            status=429,
            error=f"too many failed logins; try again in {wait} seconds",
            name=name,
        )
        response.headers["Retry-After"] = str(wait)
        return response
    operator = await context.read(context.store.operator, name) if name else None
    stored = None if operator is None else operator.password_hash
    ok = len(password) <= MAX_PASSWORD and await context.read(verify_password, stored, password)
    if not ok or operator is None:
        context.throttle.failed(name, address)
        log.warning("console: failed login of %r from %s", name, address)
        return _login_page(request, status=401, error="wrong name or password", name=name)
    token, _ = await context.read(
        context.sessions.open, operator.name, operator.role, how="password"
    )
    log.info("console: %s (%s) logged in from %s", operator.name, operator.role.value, address)
    response = redirect("/")
    set_session_cookie(response, token, context)
    response.del_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


async def logout(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    await context.read(context.sessions.close, request.cookies.get(COOKIE))
    response = redirect("/login")
    response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
