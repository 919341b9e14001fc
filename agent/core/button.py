"""Hold detection for the CONNECT button (SPEC §2 robustness rules, §4 behaviour).

Pure: feed it the button samples that passed E2E checks with the monotonic time they
arrived, and call :meth:`ButtonTracker.tick` at :meth:`ButtonTracker.deadline`. It reports a
:class:`Held` event the moment the button has been held for ``hold_s`` (not at release), so the
call starts at once. A button that sends no valid frame for ``stale_s`` counts as released;
FAULT and NOT_AVAILABLE count as released and make the button unhealthy.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.frames import ButtonState


@dataclass(frozen=True, slots=True)
class Held:
    """The button has been held for the hold time: start, cancel or re-send a call."""

    at: float  # monotonic time the threshold was reached
    held_ms: int


@dataclass(frozen=True, slots=True)
class HealthChanged:
    health: str  # "ok", "fault", "silent"


ButtonEvent = Held | HealthChanged


class ButtonTracker:
    def __init__(self, hold_s: float, stale_s: float = 0.5) -> None:
        if hold_s <= 0 or stale_s <= 0:
            raise ValueError("hold_s and stale_s must be positive")
        self.hold_s = hold_s
        self.stale_s = stale_s
        self._pressed_since: float | None = None
        self._held_reported = False
        self._last_valid: float | None = None
        self.health = "unknown"

    @property
    def pressed(self) -> bool:
        return self._pressed_since is not None

    def deadline(self) -> float | None:
        """When :meth:`tick` must next run, or None while nothing is pending."""
        times: list[float] = []
        if self._last_valid is not None and self.health != "silent":
            times.append(self._last_valid + self.stale_s)
        if self._pressed_since is not None and not self._held_reported:
            times.append(self._pressed_since + self.hold_s)
        return min(times) if times else None

    def sample(self, state: ButtonState, now: float) -> list[ButtonEvent]:
        events = self.tick(now)
        self._last_valid = now
        if state in (ButtonState.FAULT, ButtonState.NOT_AVAILABLE):
            self._release()
            events += self._set_health("fault")
            return events
        events += self._set_health("ok")
        if state is ButtonState.PRESSED:
            if self._pressed_since is None:
                self._pressed_since = now
                self._held_reported = False
            events += self._check_hold(now)
        else:
            self._release()
        return events

    def tick(self, now: float) -> list[ButtonEvent]:
        events: list[ButtonEvent] = []
        if self._last_valid is not None and now - self._last_valid >= self.stale_s:
            # Hold threshold reached before the silence began still counts.
            if self._pressed_since is not None:
                events += self._check_hold(min(now, self._last_valid + self.stale_s))
            self._release()
            events += self._set_health("silent")
            return events
        events += self._check_hold(now)
        return events

    def _check_hold(self, now: float) -> list[ButtonEvent]:
        since = self._pressed_since
        if since is None or self._held_reported or now - since < self.hold_s:
            return []
        self._held_reported = True
        return [Held(at=now, held_ms=round((now - since) * 1000))]

    def _release(self) -> None:
        self._pressed_since = None
        self._held_reported = False

    def _set_health(self, health: str) -> list[ButtonEvent]:
        if health == self.health:
            return []
        self.health = health
        return [HealthChanged(health)]
