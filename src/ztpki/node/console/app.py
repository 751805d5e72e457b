"""The console's aiohttp application: the shared context, the security middleware (who is
asking, with which role), the headers every answer carries, and the one table that turns
errors into pages.

Every page but /login and /static needs a session: from the session cookie, or opened on
the spot for a client certificate of the operator CA whose common name is an operator's.
Every POST but /login must carry the session's CSRF token (a synchronizer token in the form).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from ztpki.errors import ConfigurationError, MalformedInput, VerificationFailed, ZtpkiError
from ztpki.node.config import NodeConfig
from ztpki.node.console.health import HealthMonitor
from ztpki.node.console.refresh import Refreshed
from ztpki.node.console.sessions import COOKIE, LoginThrottle, Session, Sessions
from ztpki.node.factory_crls import FactoryRevocation
from ztpki.store.records import AuditVerification, DuplicateDevice
from ztpki.store.sqlite_register import SQLiteNodeStore

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A manifest upload (a million devices is about 150 MB of signed JSON): the body limit.
MAX_UPLOAD = 256 * 1024 * 1024
# The audit chain is verified at most this often (it is read whole, streamed), and a page
# waits at most VERIFY_WAIT for a verification before it shows the last one.
VERIFY_EVERY = 60.0
VERIFY_WAIT = 5.0

_PUBLIC = ("/login", "/static/")
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000",
}


class ConsoleRefusal(ZtpkiError):
    """A request the console refuses: status and a sentence for the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Staged:
    """An uploaded manifest that verified, kept until its operator confirms the import."""

    operator: str
    path: Path
    expires: float


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ConsoleContext:
    """What every handler reads: configuration, the register, sessions, templates."""

    config: NodeConfig
    store: SQLiteNodeStore
    sessions: Sessions
    throttle: LoginThrottle
    templates: jinja2.Environment
    # Called after a change queued revocation orders: the running node sends them now.
    revocation_queued: Callable[[], None] = lambda: None
    # The factory CRLs this node process holds (their freshness on the health page).
    factory_crls: FactoryRevocation | None = None
    # The CA systems' health, probed in the background (None: the page says it is not set up).
    health: HealthMonitor | None = None
    clock: Callable[[], datetime] = _utcnow
    # The chain's verifications (when, result), made in the background.
    verifications: Refreshed[tuple[datetime, AuditVerification]] = field(init=False, repr=False)
    # The overview's live figures being computed (ztpki.node.console.pages).
    live: asyncio.Future[dict[str, Any]] | None = field(default=None, repr=False)
    # Uploaded manifests awaiting their operator's confirmation (ztpki.node.console.actions),
    # in a directory of mode 0700 of this console's own.
    staged: dict[str, Staged] = field(default_factory=dict, repr=False)
    scratch: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="ztpki-console-")), repr=False
    )

    @property
    def directory(self) -> Path:
        return self.config.directory

    async def read(self, call: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """A store call on a worker thread: the loop keeps serving the devices."""
        return await asyncio.to_thread(call, *args, **kwargs)

    def __post_init__(self) -> None:
        self.verifications = Refreshed(
            self._verify, every=VERIFY_EVERY, wait=VERIFY_WAIT, name="console audit verify"
        )

    async def verify_audit(self) -> tuple[datetime, AuditVerification] | None:
        """The chain's last verification (when, result); None while the first one runs.

        A million entries take 15 s or more to verify, so a page never waits for more than
        VERIFY_WAIT: it shows the last result, and a new verification starts in the
        background when that one is older than VERIFY_EVERY (one at a time).
        """
        last = await self.verifications.get()
        return None if last is None else last[0]

    async def _verify(self) -> tuple[datetime, AuditVerification]:
        at = self.clock()
        return at, await self.read(self.store.verify)

    async def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.health is not None:
            await self.health.close()
        await self.verifications.close()


CONTEXT = web.AppKey("console", ConsoleContext)
# The session of the request being handled: the middleware sets it, in the request's own task
# (aiohttp handles each request in a task of its own, so it never leaks to another).
SESSION: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "console_session", default=None
)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ztpki.node.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["instant"] = lambda at: at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else "—"
    return env


def render(
    request: web.Request, template: str, *, status: int = 200, **values: Any
) -> web.Response:
    context = request.app[CONTEXT]
    session = SESSION.get()
    body = context.templates.get_template(template).render(
        session=session, path=request.path, **values
    )
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def session_of(request: web.Request) -> Session:
    session = SESSION.get()
    assert isinstance(session, Session)  # the middleware let only sessions through
    return session


def peer_common_name(request: web.Request) -> str | None:
    """The common name of the client certificate the TLS layer verified (operator CA)."""
    transport = request.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
    except ValueError:
        return None
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


async def _certificate_session(request: web.Request) -> tuple[str, Session] | None:
    name = peer_common_name(request)
    if name is None:
        return None
    context = request.app[CONTEXT]
    operator = await context.read(context.store.operator, name)
    if operator is None:
        log.warning("console: client certificate of %r names no operator: refused", name[:64])
        raise ConsoleRefusal(
            403,
            "your client certificate is from the operator CA, but its common name is not an "
            "operator of this node; ask an administrator to run `ztpki node add-operator`",
        )
    opened: tuple[str, Session] = await context.read(
        context.sessions.open, operator.name, operator.role, how="certificate"
    )
    return opened


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Requests of one keep-alive connection may share a task: each starts without a session.
    reset = SESSION.set(None)
    try:
        try:
            response = await _checked(request, handler)
        except ConsoleRefusal as exc:
            response = render(request, "error.html", status=exc.status, message=exc.message)
        except (ConfigurationError, MalformedInput, VerificationFailed, DuplicateDevice) as exc:
            # The register refused the change (a device not listed, a manifest that does not
            # verify): the operator reads why; nothing changed.
            response = render(request, "error.html", status=409, message=exc.message)
    finally:
        SESSION.reset(reset)
    response.headers.update(_HEADERS)
    return response


async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(_PUBLIC):
        return await handler(request)
    context = request.app[CONTEXT]
    token = request.cookies.get(COOKIE)
    session = await context.read(context.sessions.find, token)
    opened = None
    if session is None:
        opened = await _certificate_session(request)
        if opened is None:
            if request.method == "GET":
                return redirect("/login")
            raise ConsoleRefusal(401, "log in first: your session is missing or has expired")
        token, session = opened
    SESSION.set(session)
    if request.method == "POST":
        await _check_csrf(request, session)
    response = await handler(request)
    if opened is not None:
        set_session_cookie(response, opened[0], context)
    return response


async def _check_csrf(request: web.Request, session: Session) -> None:
    form = await request.post()
    presented = form.get("csrf")
    if not session.csrf_matches(presented if isinstance(presented, str) else None):
        log.warning(
            "console: %s %s by %s without the CSRF token: refused",
            request.method,
            request.path,
            session.operator,
        )
        raise ConsoleRefusal(
            403, "this form is stale or did not come from the console; reload the page and retry"
        )


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST the browser GETs the page that shows the outcome."""
    return web.Response(status=303, headers={"Location": location})


def set_session_cookie(response: web.StreamResponse, token: str, context: ConsoleContext) -> None:
    response.set_cookie(
        COOKIE,
        token,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
        max_age=int(context.sessions.lifetime),
    )


def require_operator(request: web.Request) -> Session:
    """The session, or 403 unless its role may change the register."""
    session = session_of(request)
    if not session.may_change():
        log.warning(
            "console: viewer %s tried %s %s: refused",
            session.operator,
            request.method,
            request.path,
        )
        raise ConsoleRefusal(
            403, f"{session.operator} is a viewer: only an operator may change the register"
        )
    return session


def build(context: ConsoleContext) -> web.Application:
    from ztpki.node.console import actions, login, pages

    app = web.Application(middlewares=[security], client_max_size=MAX_UPLOAD)
    app[CONTEXT] = context
    login.add_routes(app)
    pages.add_routes(app)
    actions.add_routes(app)
    app.router.add_static("/static/", Path(__file__).parent / "static", follow_symlinks=False)
    return app
