"""TLS connections carrying enrollment frames, driven straight from the event loop.

asyncio's own TLS transport pumps every record through Python-level memory BIOs, buffers
and protocol callbacks, and streams add a future and a task wake-up to every read. For a
1 KiB request that machinery cost more CPU than checking a CSR and signing its certificate
together (benchmarks/README.md). Here the ssl module reads and writes the non-blocking
socket itself; the loop only reports readiness. One request per connection is handled at a
time, so answers leave in request order; frames a client sends ahead wait in the decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ztpki.credentials import HandshakeRefused, log_handshake_refusal
from ztpki.errors import PayloadTooLarge
from ztpki.protocol.framing import HEADER_SIZE, MAX_FRAME_SIZE, FrameDecoder

log = logging.getLogger(__name__)
_RECV_SIZE = 64 * 1024
_ACCEPTS_PER_WAKEUP = 64
# A client that sends ahead without reading its answers is held here: no more is read from
# it until its queue of decoded requests is down to half of this.
_MAX_QUEUED = 32


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole frame (header included) to send; ``close`` hangs up once it is sent."""

    frame: bytes
    close: bool = False


class Session(Protocol):
    """What the service keeps per authenticated connection."""

    def frame(self, payload: bytes) -> Reply | asyncio.Future[Reply]: ...

    def too_large(self, error: PayloadTooLarge) -> Reply: ...


# Called once the handshake is done: a Session, or a Reply that refuses the connection.
SessionFactory = Callable[[ssl.SSLSocket], "Session | Reply"]


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout: float = 120.0  # between requests on a kept-alive connection
    read_timeout: float = 15.0  # to receive the rest of a frame once part of it arrived
    handshake_timeout: float = 15.0
    max_connections: int = 1024


class FramedTLSServer:
    """Accepts TLS connections on one listening socket and serves frames on each."""

    def __init__(
        self,
        context: ssl.SSLContext,
        sessions: SessionFactory,
        limits: ConnectionLimits,
        *,
        on_refusal: HandshakeRefused = log_handshake_refusal,
    ) -> None:
        self.context = context
        self.sessions = sessions
        self.limits = limits
        # Told of each handshake refused (default: logged at a bounded rate; strangers can
        # repeat it for free).
        self.on_refusal = on_refusal
        self._loop = asyncio.get_running_loop()
        self._listener: socket.socket | None = None
        self._accepting = False
        self._connections: set[_Connection] = set()
        self._closed = self._loop.create_future()

    def listen(self, host: str, port: int, *, backlog: int = 1024) -> tuple[str, int]:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(backlog)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._resume_accepting()
        bound = listener.getsockname()
        return str(bound[0]), int(bound[1])

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def close(self) -> None:
        if self._listener is not None:
            self._pause_accepting()
            self._listener.close()
            self._listener = None
        for connection in list(self._connections):
            connection.close()
        if not self._closed.done():
            self._closed.set_result(None)

    def _resume_accepting(self) -> None:
        if self._listener is not None and not self._accepting:
            self._loop.add_reader(self._listener.fileno(), self._accept)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._listener is not None and self._accepting:
            self._loop.remove_reader(self._listener.fileno())
            self._accepting = False

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(_ACCEPTS_PER_WAKEUP):
            if len(self._connections) >= self.limits.max_connections:
                # Leave the rest in the kernel's backlog until a connection ends.
                self._pause_accepting()
                return
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, for one
                log.warning("accepting a connection failed: %s", exc.strerror)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            connection = _Connection(self, tls)
            self._connections.add(connection)
            connection.start()

    def _ended(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if len(self._connections) < self.limits.max_connections:
            self._resume_accepting()


class _Connection:
    """One connection's state machine: handshake, then read, handle, write, and again."""

    def __init__(self, server: FramedTLSServer, tls: ssl.SSLSocket) -> None:
        self._server = server
        self._loop = server._loop
        self._tls = tls
        self._fd = tls.fileno()
        self._handshaken = False
        self._session: Session | None = None  # None after the handshake: refused
        self._decoder = FrameDecoder(max_size=MAX_FRAME_SIZE)
        self._pending: deque[bytes] = deque()
        self._busy = False  # a request is being handled or its answer written
        self._out: memoryview | None = None
        self._close_after = False
        self._farewell: Reply | None = None
        self._writer = False
        self._reading = False  # the loop watches the socket for reads
        self._read_ended = False  # out of step or refused: never read again
        self._write_needs_read = False
        self._closed = False
        # One timer per connection, re-armed lazily: a request moves the deadline, not the
        # timer, so the hot path creates no timer handles.
        self._deadline = 0.0
        self._in_frame = False
        self._in_next = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._want_read(True)
        self._set_deadline(self._server.limits.handshake_timeout)
        self._handshake()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._want_read(False)
        self._want_write(False)
        if self._timer is not None:
            self._timer.cancel()
        if self._handshaken:
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self._tls.unwrap()  # sends close_notify; never waits for the peer's
        self._tls.close()
        self._server._ended(self)

    # --- readiness ------------------------------------------------------------------------

    def _readable(self) -> None:
        if not self._handshaken:
            self._handshake()
        elif self._write_needs_read:
            self._write()
        else:
            self._read()

    def _writable(self) -> None:
        if not self._handshaken:
            self._handshake()
        elif self._out is not None:
            self._write()
        else:
            self._read()  # a read that needed to write (a TLS key update)

    def _want_read(self, wanted: bool) -> None:
        if wanted and not self._reading and not self._read_ended and not self._closed:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True
        elif not wanted and self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _end_reading(self) -> None:
        self._want_read(False)
        self._read_ended = True

    def _want_write(self, wanted: bool) -> None:
        if wanted and not self._writer:
            self._loop.add_writer(self._fd, self._writable)
        elif not wanted and self._writer:
            self._loop.remove_writer(self._fd)
        self._writer = wanted

    # --- timeouts -------------------------------------------------------------------------

    def _set_deadline(self, seconds: float) -> None:
        self._deadline = self._loop.time() + seconds
        if self._timer is None or self._timer.when() > self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(self._deadline, self._timer_fired)

    def _clear_deadline(self) -> None:
        self._deadline = float("inf")

    def _timer_fired(self) -> None:
        self._timer = None
        if self._deadline == float("inf") or self._closed:
            return
        if self._loop.time() >= self._deadline:
            self.close()
        else:
            self._timer = self._loop.call_at(self._deadline, self._timer_fired)

    # --- handshake ------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._want_write(False)
            return
        except ssl.SSLWantWriteError:
            self._want_write(True)
            return
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError):
            log.debug("TLS handshake abandoned by the client")  # a TCP health check
            self.close()
            return
        except ssl.SSLError as exc:
            self._server.on_refusal(exc)
            self.close()
            return
        except OSError:
            self.close()
            return
        self._want_write(False)
        self._handshaken = True
        try:
            started = self._server.sessions(self._tls)
        except Exception:
            log.exception("starting a session failed; closing the connection")
            self.close()
            return
        if isinstance(started, Reply):
            self._end_reading()  # nothing is read from a refused client
            self._busy = True
            self._send(started)
            return
        self._session = started
        self._set_deadline(self._server.limits.idle_timeout)
        self._read()  # the first request may have come with the client's last flight

    # --- reading and handling -------------------------------------------------------------

    def _read(self) -> None:
        if self._writer and self._out is None:
            self._want_write(False)  # a read that waited to write is being retried now
        while self._reading:
            if len(self._pending) >= _MAX_QUEUED:
                self._want_read(False)  # resumed by _next once the queue is half done
                break
            try:
                chunk = self._tls.recv(_RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self._want_write(True)
                return
            except (ssl.SSLError, OSError):
                self.close()
                return
            if not chunk:
                self.close()  # the client hung up (between requests, normally)
                return
            # Frames sent ahead while a request is handled are decoded now, answered later.
            if not self._feed(chunk):
                break
        self._next()

    def _feed(self, chunk: bytes) -> bool:
        """False when the stream is out of step and nothing more is to be read."""
        assert self._session is not None
        with contextlib.suppress(PayloadTooLarge):  # noted in failure, read just below
            self._pending.extend(self._decoder.feed(chunk))
        failure = self._decoder.failure
        if failure is None:
            return True
        self._end_reading()
        # Said after the answers to the frames that came ahead of the bad header.
        self._farewell = Reply(self._session.too_large(failure).frame, close=True)
        return False

    def _next(self) -> None:
        # A loop, not recursion: an answer sent at once calls _next again from _write, and a
        # client far ahead can have thousands of small frames decoded from one read.
        if self._in_next:
            return
        self._in_next = True
        try:
            while not self._busy and not self._closed and self._step():
                pass
        finally:
            self._in_next = False

    def _step(self) -> bool:
        """Start the next thing to do; False when there is nothing to start."""
        if self._pending:
            assert self._session is not None
            self._in_frame = False
            self._busy = True
            self._clear_deadline()
            if not self._reading and len(self._pending) <= _MAX_QUEUED // 2:
                self._resume_reading()
            try:
                result = self._session.frame(self._pending.popleft())
            except Exception:
                # A session answers its own errors; this is a bug or a failed store read.
                log.exception("handling a frame failed; closing the connection")
                self.close()
                return False
            if isinstance(result, Reply):
                self._send(result)
            else:
                result.add_done_callback(self._answered)
            return True
        if self._farewell is not None:
            self._busy = True
            self._send(self._farewell)
        elif not self._decoder.buffered:
            self._in_frame = False
            self._set_deadline(self._server.limits.idle_timeout)
        elif not self._in_frame:  # the whole frame must follow within read_timeout
            self._in_frame = True
            self._set_deadline(self._server.limits.read_timeout)
        return False

    def _resume_reading(self) -> None:
        self._want_read(True)
        if self._reading:
            # Bytes the TLS layer already decrypted wake no one up: read them soon.
            self._loop.call_soon(self._read)

    def _answered(self, future: asyncio.Future[Reply]) -> None:
        if self._closed:
            return
        if future.cancelled() or future.exception() is not None:
            self.close()  # the session logged its own failure; nothing sensible to answer
            return
        self._send(future.result())

    # --- writing --------------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self._out = memoryview(reply.frame)
        self._close_after = self._close_after or reply.close
        self._write()

    def _write(self) -> None:
        assert self._out is not None
        self._write_needs_read = False
        while self._out:
            try:
                sent = self._tls.send(self._out)
            except ssl.SSLWantWriteError:
                self._want_write(True)
                return
            except ssl.SSLWantReadError:
                self._write_needs_read = True  # the next readable wake-up retries the write
                self._want_read(True)
                return
            except (ssl.SSLError, OSError):
                self.close()
                return
            self._out = self._out[sent:]
        self._want_write(False)
        self._out = None
        self._busy = False
        if self._close_after:
            self.close()
            return
        self._next()


__all__ = ["HEADER_SIZE", "ConnectionLimits", "FramedTLSServer", "Reply", "Session"]
