"""The listening sockets of `node serve --workers N`, bound once by the supervisor.

The supervisor binds the EST address and every proxy listener before it forks; each worker
serves on its inherited copy of the same sockets and the kernel hands each new connection to
one worker that is accepting. So port 0 works (one port, chosen once), a Unix socket for the
proxy has one file, and a worker that dies and is replaced leaves the address listening all
along: connections queued meanwhile wait for the next accept instead of being reset.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ztpki.errors import ListenFailed
from ztpki.node.config import NodeConfig
from ztpki.node.proxy_listener import (
    ProxyAddress,
    bind_unix_socket,
    check_proxy_listener,
)

# asyncio's default for create_server.
BACKLOG = 100


@dataclass
class BoundListeners:
    """Sockets bound and listening; the proxies' with the address as bound (real port)."""

    main: socket.socket
    proxies: list[tuple[ProxyAddress, socket.socket]] = field(default_factory=list)
    # (path, (st_dev, st_ino)) of each Unix socket file bound here, to unlink at the end.
    unix_files: list[tuple[Path, tuple[int, int]]] = field(default_factory=list)
    # The web console's socket (`--console-listen`), served by worker 0 alone.
    console: socket.socket | None = None

    @property
    def host(self) -> str:
        return str(self.main.getsockname()[0])

    @property
    def port(self) -> int:
        return int(self.main.getsockname()[1])

    def sockets(self) -> list[socket.socket]:
        console = [] if self.console is None else [self.console]
        return [self.main, *(sock for _, sock in self.proxies), *console]

    def close(self) -> None:
        """Close this process's copies: once every worker closed its own too, the kernel
        refuses new connections."""
        for sock in self.sockets():
            sock.close()

    def unlink_files(self) -> None:
        for path, inode in self.unix_files:
            # Only our own socket file: another node may have taken the path since.
            with contextlib.suppress(OSError):
                found = path.lstat()
                if (found.st_dev, found.st_ino) == inode:
                    path.unlink()


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); ListenFailed if refused."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenFailed(host, port, exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenFailed(host, port, exc) from None
    sock.setblocking(False)
    return sock


def bind_listeners(
    config: NodeConfig,
    *,
    host: str,
    port: int,
    proxy_listen: Sequence[ProxyAddress],
    console_listen: tuple[str, int] | None = None,
) -> BoundListeners:
    """Bind the EST address, every proxy listener and the console's, or none of them."""
    for address in proxy_listen:
        check_proxy_listener(config, address)
    bound = BoundListeners(bind_tcp(host, port))
    try:
        for address in proxy_listen:
            if address.socket_path is not None:
                sock = bind_unix_socket(address.socket_path, config.proxy.socket_group)
                inode = address.socket_path.lstat()
                bound.unix_files.append((address.socket_path, (inode.st_dev, inode.st_ino)))
                bound.proxies.append((address, sock))
            else:
                sock = bind_tcp(address.host, address.port)
                name = sock.getsockname()
                bound.proxies.append((ProxyAddress(host=str(name[0]), port=int(name[1])), sock))
        if console_listen is not None:
            bound.console = bind_tcp(*console_listen)
    except BaseException:
        bound.close()
        bound.unlink_files()
        raise
    return bound


@dataclass(frozen=True)
class WorkerPlace:
    """What a worker gets from its supervisor: the bound sockets, its slot (0..N-1, kept by
    the worker that replaces it), and the private directory of the metrics exchange."""

    listeners: BoundListeners
    slot: int
    metrics_dir: Path
