"""The lifecycle every simulator shares: ``start()``, ``aclose()``, and ``async with``."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Self

__all__ = ["Service", "cancel_tasks"]


class Service:
    """``async with X() as x:`` starts ``x`` and closes it; ``aclose()`` is safe twice."""

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def cancel_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks and wait until each has ended (``None``s skipped): for ``aclose()``."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
