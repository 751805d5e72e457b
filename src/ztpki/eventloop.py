"""The event loop the long-running services (CA system, customer node) run on.

uvloop by default: its loop and its TLS transport are compiled, and measured under load
they take 5 to 9 % off the server CPU of every issuance and customization
(`benchmarks/README.md`, "Fourth round: uvloop for the services").
`ZTPKI_EVENT_LOOP=asyncio` selects the standard library's loop, for a platform without
uvloop or to rule the loop out when chasing a fault. Every test that runs a service
in-process uses the standard loop, every test that starts `ztpki ... serve` uses uvloop,
so both stay covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Coroutine, Mapping
from typing import Any, Literal, TypeVar

from ztpki.errors import ConfigurationError

EVENT_LOOP_ENV = "ZTPKI_EVENT_LOOP"
LoopName = Literal["uvloop", "asyncio"]
T = TypeVar("T")


def chosen_loop(environ: Mapping[str, str] = os.environ) -> LoopName:
    """The loop named by ZTPKI_EVENT_LOOP (default uvloop), or a ConfigurationError."""
    name = environ.get(EVENT_LOOP_ENV, "").strip().lower() or "uvloop"
    if name == "asyncio":
        return "asyncio"
    if name != "uvloop":
        raise ConfigurationError(
            f"{EVENT_LOOP_ENV}={environ[EVENT_LOOP_ENV]!r} names no event loop; "
            "use uvloop (the default) or asyncio"
        )
    try:
        import uvloop  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            f"uvloop is not installed; install it, or set {EVENT_LOOP_ENV}=asyncio"
        ) from None
    return "uvloop"


def run_service(main: Coroutine[Any, Any, T], loop: LoopName) -> T:
    """Run a service's main coroutine to completion on the given event loop.

    The CLI calls `chosen_loop` first, before it loads any key, so that a bad setting is
    reported before anything else happens.
    """
    if loop == "asyncio":
        return asyncio.run(main)
    import uvloop

    return uvloop.run(main)


def running_loop_name() -> LoopName:
    """Which loop this coroutine runs on, for the service's startup log line."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.split(".")[0] == "uvloop" else "asyncio"


__all__ = ["EVENT_LOOP_ENV", "chosen_loop", "run_service", "running_loop_name"]


async def cancel_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each background task (None: never started) and wait until it has stopped."""
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
