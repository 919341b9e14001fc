"""Hold detection with an injected clock."""

from __future__ import annotations

from agent.core.button import ButtonTracker, HealthChanged, Held
from agent.core.frames import ButtonState

P, R = ButtonState.PRESSED, ButtonState.RELEASED


def feed(tracker: ButtonTracker, state: ButtonState, start: float, end: float) -> list[Held]:
    """Cyclic 100 ms frames from ``start`` to ``end``, ticking at deadlines in between."""
    held: list[Held] = []
    t = start
    while t <= end + 1e-9:
        deadline = tracker.deadline()
        while deadline is not None and deadline < t:
            held += [e for e in tracker.tick(deadline) if isinstance(e, Held)]
            deadline = tracker.deadline()
        held += [e for e in tracker.sample(state, t) if isinstance(e, Held)]
        t = round(t + 0.1, 6)
    return held


def test_short_press_does_nothing() -> None:
    tracker = ButtonTracker(hold_s=2.0)
    assert feed(tracker, P, 0.0, 1.5) == []
    assert feed(tracker, R, 1.6, 3.0) == []


def test_hold_fires_once_at_the_threshold_not_at_release() -> None:
    tracker = ButtonTracker(hold_s=2.0)
    held = feed(tracker, P, 0.0, 5.0)
    assert len(held) == 1
    assert held[0].at == 2.0
    assert held[0].held_ms == 2000


def test_threshold_between_frames_fires_from_the_deadline() -> None:
    tracker = ButtonTracker(hold_s=2.05)
    for i in range(21):
        assert tracker.sample(P, i / 10) in ([], [HealthChanged("ok")])
    assert tracker.deadline() == 2.05
    assert tracker.tick(2.05) == [Held(at=2.05, held_ms=2050)]


def test_silent_button_counts_as_released() -> None:
    tracker = ButtonTracker(hold_s=2.0)
    tracker.sample(P, 0.0)
    tracker.sample(P, 1.0)
    # the module dies: no valid frame after 1.0 -> released at 1.5, no call at 2.0
    events = tracker.tick(1.5)
    assert HealthChanged("silent") in events
    assert not tracker.pressed
    assert tracker.tick(2.0) == []


def test_fault_releases_and_reports() -> None:
    tracker = ButtonTracker(hold_s=2.0)
    tracker.sample(P, 0.0)
    events = tracker.sample(ButtonState.FAULT, 1.0)
    assert HealthChanged("fault") in events
    assert tracker.health == "fault"
    assert feed(tracker, P, 1.1, 2.9) == []  # the hold restarts at 1.1


def test_second_hold_needs_a_release_first() -> None:
    tracker = ButtonTracker(hold_s=2.0)
    assert len(feed(tracker, P, 0.0, 6.0)) == 1
    feed(tracker, R, 6.1, 6.5)
    assert len(feed(tracker, P, 6.6, 8.7)) == 1
