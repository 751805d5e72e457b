"""The CA system's framed TLS server on its own: a real server on 127.0.0.1, real TLS
clients, and a session that echoes frames, so the limits can be small and exact."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ztpki.casystem.connections import ConnectionLimits, FramedTLSServer, Reply
from ztpki.credentials import client_context, server_context
from ztpki.errors import PayloadTooLarge
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.framing import encode_frame

pytestmark = pytest.mark.timeout(60)
NOW = datetime.now(UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class _Contexts:
    server: ssl.SSLContext
    client: ssl.SSLContext


def _contexts() -> _Contexts:
    ca_key = generate_private_key(KeySpec.EC_P256)
    ca_cert = create_self_signed_ca(ca_key, _name("test CA"), now=NOW, validity=timedelta(days=2))
    ca = CertificateAuthority(name="test", key=ca_key, certificate=ca_cert)

    def issue(cn: str, profile: CertificateProfile) -> tuple[PrivateKey, x509.Certificate]:
        key = generate_private_key(KeySpec.EC_P256)
        grant = IssuanceGrant(
            subject=_name(cn),
            profile=profile,
            not_before=NOW - timedelta(minutes=1),
            not_after=NOW + timedelta(days=1),
            ip_addresses=("127.0.0.1",) if profile is CertificateProfile.SERVER else (),
        )
        return key, ca.issue(key.public_key(), grant)

    server_key, server_cert = issue("server", CertificateProfile.SERVER)
    client_key, client_cert = issue("client", CertificateProfile.DEVICE)
    return _Contexts(
        server=server_context(server_key, [server_cert], client_anchors=[ca_cert]),
        client=client_context(key=client_key, chain=[client_cert], server_anchors=[ca_cert]),
    )


CONTEXTS = _contexts()


class _Echo:
    """Answers each frame with its payload reversed; b"later" is answered from a future."""

    def frame(self, payload: bytes) -> Reply | asyncio.Future[Reply]:
        reply = Reply(encode_frame(payload[::-1]), close=payload == b"bye")
        if payload != b"later":
            return reply
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, reply)
        return future

    def too_large(self, error: PayloadTooLarge) -> Reply:
        return Reply(encode_frame(b"too large"), close=True)


@contextmanager
def _server(
    limits: ConnectionLimits,
    sessions: Callable[[ssl.SSLSocket], _Echo | Reply] = lambda tls: _Echo(),
) -> Iterator[tuple[str, int]]:
    loop = asyncio.new_event_loop()
    ready: list[tuple[str, int]] = []
    started = threading.Event()
    holder: list[FramedTLSServer] = []

    async def run() -> None:
        server = FramedTLSServer(CONTEXTS.server, sessions, limits)
        holder.append(server)
        ready.append(server.listen("127.0.0.1", 0))
        started.set()
        await server.wait_closed()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(holder[0].close)
        thread.join(10)
        loop.close()


def _limits(**changes: float) -> ConnectionLimits:
    values: dict[str, float] = {
        "idle_timeout": 30.0,
        "read_timeout": 30.0,
        "handshake_timeout": 30.0,
        "max_connections": 8,
    }
    values.update(changes)
    return ConnectionLimits(
        idle_timeout=values["idle_timeout"],
        read_timeout=values["read_timeout"],
        handshake_timeout=values["handshake_timeout"],
        max_connections=int(values["max_connections"]),
    )


def _connect(address: tuple[str, int], *, timeout: float = 10.0) -> ssl.SSLSocket:
    plain = socket.create_connection(address, timeout=timeout)
    return CONTEXTS.client.wrap_socket(plain, server_hostname="127.0.0.1")


def _read_frame(tls: ssl.SSLSocket) -> bytes:
    header = _read_exactly(tls, 4)
    return _read_exactly(tls, int.from_bytes(header, "big"))


def _read_exactly(tls: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = tls.recv(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def _closed_by_server(tls: ssl.SSLSocket) -> bool:
    try:
        return tls.recv(1) == b""
    except (ConnectionError, ssl.SSLEOFError):
        return True


def test_ok_frames_answered_in_order_even_when_sent_ahead() -> None:
    with _server(_limits()) as address, _connect(address) as tls:
        payloads = [b"one", b"later", b"three", b"x" * 100_000]
        tls.sendall(b"".join(encode_frame(p) for p in payloads))
        assert [_read_frame(tls) for _ in payloads] == [p[::-1] for p in payloads]
        tls.sendall(encode_frame(b"again"))  # the connection stays for more
        assert _read_frame(tls) == b"niaga"


def test_ok_reply_that_closes_ends_the_connection() -> None:
    with _server(_limits()) as address, _connect(address) as tls:
        tls.sendall(encode_frame(b"bye") + encode_frame(b"never answered"))
        assert _read_frame(tls) == b"eyb"
        assert _closed_by_server(tls)


def test_fail_oversized_header_after_frames_ahead_of_it() -> None:
    with _server(_limits()) as address, _connect(address) as tls:
        tls.sendall(encode_frame(b"ahead") + ((1 << 20) + 1).to_bytes(4, "big"))
        assert _read_frame(tls) == b"daeha"
        assert _read_frame(tls) == b"too large"
        assert _closed_by_server(tls)


def test_fail_refusing_session_says_why_and_hangs_up() -> None:
    refusal = Reply(encode_frame(b"not registered"), close=True)
    with _server(_limits(), sessions=lambda tls: refusal) as address, _connect(address) as tls:
        assert _read_frame(tls) == b"not registered"
        assert _closed_by_server(tls)


def test_fail_idle_connection_closed_after_idle_timeout() -> None:
    with _server(_limits(idle_timeout=0.2)) as address, _connect(address) as tls:
        tls.sendall(encode_frame(b"ping"))
        assert _read_frame(tls) == b"gnip"
        # Blocks until the server hangs up; the socket's own 10 s timeout is the bound.
        assert _closed_by_server(tls)


def test_fail_partial_frame_closed_after_read_timeout() -> None:
    with _server(_limits(read_timeout=0.2)) as address, _connect(address) as tls:
        tls.sendall((100).to_bytes(4, "big") + b"only part of it")
        assert _closed_by_server(tls)


def test_fail_silent_client_closed_after_handshake_timeout() -> None:
    with _server(_limits(handshake_timeout=0.2)) as address:
        plain = socket.create_connection(address, timeout=10)
        with plain:
            assert plain.recv(1) == b""  # no ClientHello sent: the server gives up


def test_ok_connections_over_the_limit_wait_for_a_free_slot() -> None:
    with _server(_limits(max_connections=1)) as address:
        first = _connect(address)
        first.sendall(encode_frame(b"first"))
        assert _read_frame(first) == b"tsrif"
        # The second connection is left in the kernel's backlog: no handshake yet.
        plain = socket.create_connection(address, timeout=0.5)
        waiting = CONTEXTS.client.wrap_socket(
            plain, server_hostname="127.0.0.1", do_handshake_on_connect=False
        )
        with pytest.raises(TimeoutError):
            waiting.do_handshake()
        first.close()
        waiting.settimeout(10)
        waiting.do_handshake()
        waiting.sendall(encode_frame(b"second"))
        assert _read_frame(waiting) == b"dnoces"
        waiting.close()


class _Broken(_Echo):
    def frame(self, payload: bytes) -> Reply | asyncio.Future[Reply]:
        if payload == b"boom":
            raise RuntimeError("a bug in the session")
        return super().frame(payload)


def test_fail_session_that_raises_closes_only_its_connection() -> None:
    with (
        _server(_limits(), sessions=lambda tls: _Broken()) as address,
        _connect(address) as bystander,
        _connect(address) as victim,
    ):
        victim.sendall(encode_frame(b"boom"))
        assert _closed_by_server(victim)
        bystander.sendall(encode_frame(b"still here"))
        assert _read_frame(bystander) == b"ereh llits"


def test_fail_session_factory_that_raises_closes_the_connection() -> None:
    def failing(tls: ssl.SSLSocket) -> _Echo:
        raise RuntimeError("the store could not be read")

    with _server(_limits(), sessions=failing) as address, _connect(address) as tls:
        assert _closed_by_server(tls)


def test_ok_client_far_ahead_is_held_back_and_still_answered_in_order() -> None:
    # Far more frames than the server queues: it stops reading, and must resume by itself,
    # including the frames the TLS layer already decrypted when it stopped.
    payloads = [f"frame-{n:05d}".encode() for n in range(3000)]
    wire = b"".join(encode_frame(p) for p in payloads)
    with _server(_limits()) as address, _connect(address) as tls:
        sender = threading.Thread(target=tls.sendall, args=(wire,), daemon=True)
        sender.start()
        answers = [_read_frame(tls) for _ in payloads]
        sender.join(10)
        assert answers == [p[::-1] for p in payloads]
