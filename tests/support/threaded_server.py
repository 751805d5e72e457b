"""An asyncio TLS server on 127.0.0.1 in a thread of its own, for tests that play a peer."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.contextmanager
def threaded_tls_server(answer: Handler, context: ssl.SSLContext) -> Iterator[int]:
    """Serve ``answer`` over TLS on 127.0.0.1 (a free port, yielded) until the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def serve() -> asyncio.Server:
        return await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)

    server = asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=30)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:

        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
