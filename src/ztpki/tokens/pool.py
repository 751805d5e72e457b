"""Logged-in sessions on one PKCS#11 token, shared by the threads that sign.

Sessions stay open and logged in across requests, so a signature costs one C_Sign, not an
open, a login and a key search; the pool keeps up to ``size`` of them. Calls into one
module are serialized, because python-pkcs11 initializes modules without OS locking (see
``_Module.calls``): the pool bounds sessions, the lock makes them safe.

A session that fails is closed, never handed out again. When no session can be opened or
the key is no longer found (the module lost the token: unplugged, restarted, its files
moved), the module is finalized and initialized again as soon as no session is in use, so
the service recovers without a restart. Every failure is TokenUnavailable: the request
fails now and the next one tries again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pkcs11
from pkcs11.exceptions import PKCS11Error

from ztpki.errors import ConfigurationError, Unavailable
from ztpki.pki.pkcs11_uri import Pkcs11Uri
from ztpki.tokens.access import DEFAULT_POOL_SIZE, TokenAccess

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Module

log = logging.getLogger(__name__)


class TokenUnavailable(Unavailable):
    """The token holding a key cannot be reached now (removed, failed, key not found)."""


class _Module:
    """One loaded PKCS#11 module and what every pool on it shares.

    C_Finalize ends every session of the process on that module, whichever pool opened it,
    and the module may hand out the same session handles again afterwards. So a reinitialize
    waits until no session of the module is borrowed, and bumps ``generation``: a session of
    an older generation is dropped without C_CloseSession (its handle may now be another
    session's).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = _load(path)
        self.generation = 0
        self.borrowed = 0
        self.lost = False  # a token went away: initialize again before the next session
        self.ready = threading.Condition()
        # python-pkcs11 initializes a module with C_Initialize(NULL): the application promises
        # not to call it from two threads at once (SoftHSM then takes no locks and crashes
        # when it is). Every operation on the module holds this lock.
        self.calls = threading.RLock()
        # The logged-in session of each token (by slot id), in this generation.
        self.anchors: dict[int, pkcs11.Session] = {}
        self.anchor_lock = threading.Lock()

    def reinitialize(self) -> None:
        """With ``ready`` held and nothing borrowed."""
        try:
            self.lib.reinitialize()
        except PKCS11Error as exc:
            log.warning("PKCS#11 module %s did not reinitialize: %s", self.path, exc)
            return
        self.generation += 1
        self.anchors = {}  # ended by C_Finalize: their handles are not to be closed
        self.lost = False
        log.info("PKCS#11 module %s initialized again", self.path)


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def _load(path: str) -> Pkcs11Module:
    try:
        return pkcs11.lib(path)
    except PKCS11Error as exc:
        raise ConfigurationError(
            f"cannot load PKCS#11 module {path}: {type(exc).__name__}"
        ) from None


def _module(path: str) -> _Module:
    with _modules_lock:
        loaded = _modules.get(path)
        if loaded is None:
            loaded = _modules[path] = _Module(path)
        return loaded


@dataclass
class PooledSession:
    """A borrowed session and what was looked up on it (object handles live per session)."""

    session: pkcs11.Session
    generation: int
    found: dict[object, Any] = field(default_factory=dict)


class TokenPool:
    """Up to ``size`` logged-in sessions on the token ``uri`` names."""

    def __init__(self, access: TokenAccess, uri: Pkcs11Uri, *, size: int = DEFAULT_POOL_SIZE):
        if size < 1:
            raise ConfigurationError("a PKCS#11 session pool needs at least one session")
        self._access = access
        self._uri = uri
        self._size = size
        self._module = _module(access.module)
        self._idle: list[PooledSession] = []
        self._open = 0  # this pool's sessions, idle or borrowed

    @property
    def size(self) -> int:
        return self._size

    @property
    def module_path(self) -> str:
        return self._access.module

    @property
    def open_sessions(self) -> int:
        return self._open

    @contextmanager
    def session(self, *, rw: bool = False) -> Iterator[PooledSession]:
        """A logged-in session for one operation. Any PKCS#11 failure inside closes it and
        becomes TokenUnavailable; other exceptions pass through and the session goes back."""
        with self._module.calls:
            yield from self._operate(rw=rw)

    def _operate(self, *, rw: bool) -> Iterator[PooledSession]:
        borrowed = self._borrow(rw=rw)
        try:
            yield borrowed
        except PKCS11Error as exc:
            self._discard(borrowed, lost=_token_lost(exc))
            raise TokenUnavailable(
                f"the token {self._label} failed ({type(exc).__name__}); try again when the "
                "token is back"
            ) from None
        except BaseException:
            self._give_back(borrowed)
            raise
        self._give_back(borrowed)

    def close(self) -> None:
        with self._module.ready:
            for pooled in self._idle:
                self._close(pooled)
            self._open -= len(self._idle)
            self._idle.clear()

    @property
    def _label(self) -> str:
        return repr(self._uri.token or self._uri.serial or self._uri.slot_id)

    def _borrow(self, *, rw: bool, retried: bool = False) -> PooledSession:
        module = self._module
        with module.ready:
            while True:
                if module.lost and module.borrowed == 0:
                    module.reinitialize()
                self._drop_stale()
                if self._idle and not rw:
                    module.borrowed += 1
                    return self._idle.pop()
                if self._open < self._size:
                    break
                if rw and self._idle:  # make room: read-write sessions are rare
                    self._close(self._idle.pop())
                    self._open -= 1
                    break
                module.ready.wait()
            self._open += 1
            module.borrowed += 1
            generation = module.generation
        try:
            return PooledSession(self._login(rw=rw), generation)
        except PKCS11Error as exc:
            with module.ready:
                self._open -= 1
                module.borrowed -= 1
                module.lost = True  # a token made or put back after the module started
                module.ready.notify_all()
            if not retried:
                return self._borrow(rw=rw, retried=True)
            raise TokenUnavailable(
                f"cannot open a session on token {self._label} ({type(exc).__name__}); "
                "try again when the token is back"
            ) from None
        except BaseException:
            with module.ready:
                self._open -= 1
                module.borrowed -= 1
                module.ready.notify_all()
            raise

    def _login(self, *, rw: bool) -> pkcs11.Session:
        """A session on the token, which is logged in through the module's anchor session.

        The login belongs to the application, not to a session, and python-pkcs11 logs the
        whole application out when it closes a session that logged in. So one anchor session
        per token logs in and stays open until the module is initialized again; the pool's
        own sessions open without a PIN and may come and go.
        """
        token = self._token()
        module = self._module
        with module.anchor_lock:
            if token.slot.slot_id not in module.anchors:
                try:
                    anchor = token.open(user_pin=self._access.pin.decode())
                except pkcs11.exceptions.PinIncorrect:
                    raise ConfigurationError(
                        f"the PIN for token {self._label} is wrong (ZTPKI_PKCS11_PIN or the PIN "
                        "file)"
                    ) from None
                except pkcs11.exceptions.PinLocked:
                    raise ConfigurationError(
                        f"the user PIN of token {self._label} is locked; the token's security "
                        "officer must unlock it"
                    ) from None
                module.anchors[token.slot.slot_id] = anchor
        return token.open(rw=rw)

    def _token(self) -> pkcs11.Token:
        lib = self._module.lib
        query: dict[str, Any] = {}
        if self._uri.token is not None:
            query["token_label"] = self._uri.token
        if self._uri.serial is not None:
            query["token_serial"] = self._uri.serial.encode()
        if self._uri.slot_id is not None:
            for slot in lib.get_slots(token_present=True):
                if slot.slot_id == self._uri.slot_id:
                    return slot.get_token()
            raise pkcs11.exceptions.NoSuchToken(f"no slot {self._uri.slot_id}")
        try:
            return lib.get_token(**query)
        except pkcs11.exceptions.MultipleTokensReturned:
            raise ConfigurationError(
                f"more than one token matches {self._uri.text}; add serial= to the URI"
            ) from None

    def _drop_stale(self) -> None:
        """With ``ready`` held: forget idle sessions from before a reinitialize."""
        current = self._module.generation
        stale = [p for p in self._idle if p.generation != current]
        if stale:
            self._idle = [p for p in self._idle if p.generation == current]
            self._open -= len(stale)

    def _close(self, pooled: PooledSession) -> None:
        if pooled.generation == self._module.generation:
            with contextlib.suppress(PKCS11Error):  # the token is gone: nothing to close
                pooled.session.close()

    def _give_back(self, pooled: PooledSession) -> None:
        with self._module.ready:
            self._module.borrowed -= 1
            if pooled.generation == self._module.generation:
                self._idle.append(pooled)
            else:
                self._open -= 1
            self._module.ready.notify_all()

    def _discard(self, pooled: PooledSession, *, lost: bool) -> None:
        with self._module.ready:
            self._close(pooled)
            self._open -= 1
            self._module.borrowed -= 1
            self._module.lost = self._module.lost or lost
            self._module.ready.notify_all()


def _token_lost(exc: PKCS11Error) -> bool:
    """Whether a failure means the module no longer has the token (as opposed to one
    operation going wrong): only then is reinitializing the module worth its cost."""
    return not isinstance(
        exc,
        pkcs11.exceptions.DataInvalid
        | pkcs11.exceptions.DataLenRange
        | pkcs11.exceptions.MechanismInvalid
        | pkcs11.exceptions.MechanismParamInvalid,
    )
