"""The lifecycle every simulator shares: ``start()``, ``aclose()``, and ``async with``."""

from __future__ import annotations

from types import TracebackType
from typing import Self


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
