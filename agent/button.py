"""The CONNECT button on the event loop: samples in (from CAN or the serial module), the
tracker's events out. The pure tracker names its next deadline (the hold threshold, the
500 ms release timeout); this keeps it as one loop timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agent.core.button import ButtonTracker, HealthChanged, Held
from agent.core.frames import ButtonState

Events = list[HealthChanged | Held]


class ButtonClock:
    def __init__(self, tracker: ButtonTracker, on_events: Callable[[Events], None]) -> None:
        self.tracker = tracker
        self._on_events = on_events
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def sample(self, state: ButtonState, now: float) -> None:
        self._handle(self.tracker.sample(state, now))

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _handle(self, events: Events) -> None:
        self._on_events(events)
        self.stop()
        deadline = self.tracker.deadline()
        if deadline is not None and self._loop is not None:
            delay = max(0.0, deadline - time.monotonic())
            self._timer = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._handle(self.tracker.tick(time.monotonic()))
