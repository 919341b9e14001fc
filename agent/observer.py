"""What the agent tells an onlooker: a call stored, a message delivered, a state change.

The daemon runs with :class:`Unobserved`. The simulators, the demo and the benchmarks plug
in a recorder (the simulators' ObservedAgent) to wait on conditions and time calls, without the
production class keeping test-only state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What the agent did for one call."""

    incident_id: str
    sequence: int
    held_at: float  # monotonic: the hold threshold was reached
    stored_at: float  # monotonic: in the outbox


class Observer(Protocol):
    def call_stored(self, record: CallRecord) -> None: ...

    def delivered(self, kind: str, incident_id: str, sequence: int, at: float) -> None: ...

    def changed(self) -> None:
        """Any state change: the button, the LED, the GPS, the link, the incident."""


class Unobserved:
    def call_stored(self, record: CallRecord) -> None:
        pass

    def delivered(self, kind: str, incident_id: str, sequence: int, at: float) -> None:
        pass

    def changed(self) -> None:
        pass
