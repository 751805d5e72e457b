"""The node's listener for TLS-terminating proxies: TLS with a proxy client certificate, or a
Unix socket only the proxy's user can open. There is no plain-TCP proxy listener.

Over TCP the listener speaks TLS with the node's server certificate and requires a client
certificate that chains to ``[proxy] ca`` (nginx: ``proxy_ssl_certificate``); a handshake
without one, or with any other certificate (a device's included), fails before any HTTP is
read. With ``[proxy] fingerprints`` a connection whose certificate is not pinned is closed
as soon as the handshake ends. A proxy CA that is also a factory or customer CA of the node is
refused: every device would be a proxy. Then the address fence: only a peer in
``[proxy] trusted`` is believed (ztpki.node.proxy). A Unix socket is bound 0600 and only
then opened to the group ``[proxy] socket_group`` (mode 0660), so no other user can ever
connect to it.

Either way the hop from proxy to node is never clear text on a network: serverkeygen's
private keys cross it inside TLS, or inside the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import hashlib
import logging
import os
import socket
import ssl
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztpki.credentials import server_context
from ztpki.errors import ConfigurationError, ListenFailed
from ztpki.node.config import NODE_FILE, NodeConfig
from ztpki.node.proxy_config import SOCKET_MODE, ProxyConfig
from ztpki.node.proxy_setup import read_proxy_ca
from ztpki.pki.keys import PrivateKey

log = logging.getLogger(__name__)

UNIX_PREFIX = "unix:"


@dataclass(frozen=True)
class ProxyAddress:
    """Where the proxy listener listens: HOST:PORT (TLS) or ``unix:/path``."""

    host: str = ""
    port: int = 0
    socket_path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> ProxyAddress:
        from ztpki.casystem.client import parse_address

        if text.startswith(UNIX_PREFIX):
            path = text[len(UNIX_PREFIX) :]
            if not path.startswith("/") or "\x00" in path or len(path.encode()) > 107:
                raise ConfigurationError(
                    f"proxy listener {text[:120]!r}: give an absolute socket path, "
                    "e.g. unix:/run/ztpki/proxy.sock"
                )
            return cls(socket_path=Path(path))
        try:
            host, port = parse_address(text, allow_any_port=True)
        except ConfigurationError:
            raise ConfigurationError(
                f"proxy listener {text[:120]!r} is neither HOST:PORT nor unix:/path"
            ) from None
        return cls(host=host, port=port)

    def __str__(self) -> str:
        if self.socket_path is not None:
            return f"{UNIX_PREFIX}{self.socket_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def check_proxy_listener(config: NodeConfig, address: ProxyAddress) -> None:
    """Refuse a proxy listener the configuration cannot secure, naming the fix."""
    proxy = config.proxy
    fix = f"`ztpki node set-proxy --dir {config.directory}"
    if address.socket_path is not None:
        return
    if proxy.ca is None:
        raise ConfigurationError(
            f"a TCP proxy listener ({address}) needs the proxies' TLS client certificates: "
            f"{fix} --proxy-ca FILE` (the CA of the proxy's certificate, nginx "
            "proxy_ssl_certificate), or listen on a Unix socket (--proxy-listen unix:/PATH)"
        )
    if not proxy.trusted:
        raise ConfigurationError(
            f"a TCP proxy listener ({address}) needs the proxies' addresses as a second fence: "
            f"{fix} --trusted-proxy ADDRESS` (or `trusted = [...]` under [proxy] in "
            f"{config.directory / NODE_FILE})"
        )


def proxy_anchors(config: NodeConfig) -> list[x509.Certificate]:
    assert config.proxy.ca is not None
    return read_proxy_ca(config.path(config.proxy.ca))


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def refuse_device_issuers(
    anchors: list[x509.Certificate], device_issuers: Sequence[x509.Certificate]
) -> None:
    """A proxy CA that also issues device certificates (a factory or customer CA of this node)
    would let every device speak for every other one: refused, whatever the certificate."""
    issuers = {_spki(c) for c in device_issuers}
    for anchor in anchors:
        if _spki(anchor) in issuers:
            raise ConfigurationError(
                f"the proxy CA {anchor.subject.rfc4514_string()} is also a CA of this node's "
                "devices: every device could then speak for the others. Give the proxies a CA "
                "of their own (`ztpki node set-proxy --proxy-ca FILE`)"
            )


def proxy_ssl_context(
    config: NodeConfig,
    key: PrivateKey,
    chain: tuple[x509.Certificate, ...],
    *,
    device_issuers: Sequence[x509.Certificate],
) -> ssl.SSLContext:
    """The node's server identity; a client certificate under [proxy] ca is required."""
    anchors = proxy_anchors(config)
    refuse_device_issuers(anchors, device_issuers)
    context = server_context(key, chain, client_anchors=anchors, require_client_cert=True)
    # A proxy's own (leaf or self-signed) certificate may be the anchor: pinning one proxy.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.num_tickets = 0  # every connection proves the proxy's key again
    return context


class _PinnedProxy(asyncio.Protocol):
    """Hands a connection to the HTTP protocol only if the proxy's certificate is pinned (or
    no certificate is: then the proxy CA alone decides)."""

    def __init__(self, inner: asyncio.Protocol, pins: frozenset[str]) -> None:
        self._inner: asyncio.Protocol | None = inner
        self._pins = pins

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        fingerprint = hashlib.sha256(der).hexdigest() if der else None
        if self._pins and fingerprint not in self._pins:
            log.warning(
                "closed a proxy connection from %s: its certificate sha256:%s is not one of "
                "[proxy] fingerprints",
                transport.get_extra_info("peername"),
                fingerprint,
            )
            self._inner = None
            cast(asyncio.Transport, transport).abort()  # a TLS transport (uvloop's too)
            return
        assert self._inner is not None
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def protocol_factory(
    server: Callable[[], Any], proxy: Callable[[], ProxyConfig]
) -> Callable[[], asyncio.Protocol]:
    """The TLS listener's protocol factory: pinned to the [proxy] fingerprints ``proxy()``
    names when the connection is made, so that a reload (SIGHUP) adds or removes a pin for
    every new connection (a Unix socket has no certificate to pin; its permissions are its
    fence)."""
    return lambda: _PinnedProxy(server(), frozenset(proxy().fingerprints))


@dataclass
class ProxyListener:
    """One running proxy listener."""

    address: ProxyAddress  # as bound (the real port for port 0)
    runner: web.AppRunner
    server: asyncio.Server
    socket_inode: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        await self.runner.cleanup()
        self._unlink_socket()

    def _unlink_socket(self) -> None:
        path = self.address.socket_path
        if path is None or self.socket_inode is None:
            return
        # Only our own socket file: another node may have taken the path since.
        with contextlib.suppress(OSError):
            found = path.lstat()
            if (found.st_dev, found.st_ino) == self.socket_inode:
                path.unlink()


async def listen(
    address: ProxyAddress,
    factory: Callable[[], asyncio.Protocol],
    *,
    config: NodeConfig,
    key: PrivateKey,
    chain: tuple[x509.Certificate, ...],
    device_issuers: Sequence[x509.Certificate],
    handshake_timeout: float,
    sock: socket.socket | None = None,
) -> tuple[asyncio.Server, ProxyAddress, tuple[int, int] | None]:
    """``sock``: already bound for ``address`` (a worker of `node serve --workers`; its
    supervisor owns the socket file, so no inode comes back)."""
    loop = asyncio.get_running_loop()
    if sock is not None and address.socket_path is not None:
        return await loop.create_unix_server(factory, sock=sock), address, None
    if address.socket_path is not None:
        sock = bind_unix_socket(address.socket_path, config.proxy.socket_group)
        inode = address.socket_path.lstat()
        try:
            server = await loop.create_unix_server(factory, sock=sock)
        except BaseException:
            sock.close()
            address.socket_path.unlink(missing_ok=True)
            raise
        return server, address, (inode.st_dev, inode.st_ino)
    context = proxy_ssl_context(config, key, chain, device_issuers=device_issuers)
    if sock is not None:
        server = await loop.create_server(
            factory, sock=sock, ssl=context, ssl_handshake_timeout=handshake_timeout
        )
        return server, address, None
    try:
        server = await loop.create_server(
            factory,
            address.host,
            address.port,
            ssl=context,
            ssl_handshake_timeout=handshake_timeout,
            reuse_address=True,
        )
    except OSError as exc:
        raise ListenFailed(address.host, address.port, exc) from None
    bound = server.sockets[0].getsockname()
    return server, ProxyAddress(host=str(bound[0]), port=int(bound[1])), None


def socket_gid(group: str | None) -> int | None:
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigurationError(
            f"[proxy] socket_group {group!r} is not a group on this host (getent group {group})"
        ) from None


def bind_unix_socket(path: Path, group: str | None) -> socket.socket:
    """A listening Unix socket at path, mode 0660, group `group`; never open to others."""
    gid = socket_gid(group)
    _refuse_live_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes bind() create the file 0600: until chmod below opens it to the
    # group, only the node's own user can connect (no window for anyone else).
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {UNIX_PREFIX}{path}: {exc.strerror}") from None
    finally:
        os.umask(previous)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, SOCKET_MODE)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        path.unlink(missing_ok=True)
        raise ConfigurationError(
            f"cannot give {UNIX_PREFIX}{path} to group {group}: {exc.strerror} (the node's "
            "user must be a member of that group, or the node must run as root)"
        ) from None
    sock.setblocking(False)
    return sock


def _refuse_live_socket(path: Path) -> None:
    """Remove a socket file left by a node that died; refuse one a process still serves, and
    anything that is not a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigurationError(f"cannot use {UNIX_PREFIX}{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigurationError(
            f"cannot listen on {UNIX_PREFIX}{path}: a file that is not a socket is there"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno != errno.ECONNREFUSED:
            raise ConfigurationError(
                f"cannot use {UNIX_PREFIX}{path}: {os.strerror(exc.errno or 0)}"
            ) from None
        path.unlink()  # stale: nobody listens
        return
    finally:
        probe.close()
    raise ConfigurationError(
        f"cannot listen on {UNIX_PREFIX}{path}: another process serves that socket"
    )
