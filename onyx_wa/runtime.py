"""Running long-lived services in the foreground: signals, clean shutdown, one-line errors.

Why: every ``onyx-wa`` service (broker, worker, ingress, sim, up) must stop cleanly on Ctrl-C or
SIGTERM, and a start-up failure must be one line that names the problem and the fix, with nothing
left half-started. Services are written as ``async def serve(stop: asyncio.Event)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

Service = Callable[[asyncio.Event], Awaitable[None]]


class StartupError(RuntimeError):
    """A service could not start; the message is shown to the user as is (one line)."""


def run_service(service: Service) -> None:
    """Run ``service`` until SIGINT/SIGTERM sets its stop event; then let it clean up."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await service(stop)

    try:  # uvloop: a faster event loop where available (Linux/macOS); the stdlib loop otherwise
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


async def wait_stop(stop: asyncio.Event, *tasks: asyncio.Future) -> None:
    """Wait for ``stop`` or for any task to end (a crashed component stops the whole process)."""
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    for task in done:
        if task is not waiter and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
