"""Wait until a condition on some state holds: the one helper every adapter and simulator uses.

The owner of the state calls :meth:`Waiters.notify` after each change; a waiter passes a
predicate over that state to :meth:`Waiters.wait`, which re-checks it after every
notification. Each notification wakes every waiter (the event is set, then replaced by a fresh
one), so none misses a change and none spins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Waiters"]


class Waiters:
    """Tasks waiting for a predicate over some state; the state's owner calls ``notify()``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """The state changed: wake every waiter to re-check its predicate."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once ``predicate()`` holds; raises ``TimeoutError`` after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._event.wait()

    async def next(self, timeout: float | None = None) -> None:
        """Return at the next ``notify()``; raises ``TimeoutError`` after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            await self._event.wait()
