"""The incident lifecycle and the LED mode it implies (SPEC §4, §5).

Pure: every method takes the current monotonic time (and UTC wall time where a payload
needs it) and returns the actions the shell must carry out. The LED mode is derived from
the state, never stored separately, so it cannot drift from it.

- A hold while idle opens an incident: publish request sequence 1 at once.
- A hold within ``cancel_window_s`` of the start cancels: publish a cancel, LED
  ``cancelled`` for ``cancelled_display_s``, then ``ready``.
- A hold after the cancel window re-sends the open incident: same id, sequence + 1.
- LED ``calling`` until the backend acknowledges (``received``/``assigned`` -> ``connected``);
  ``failed`` while a message of the incident has waited more than ``deliver_timeout_s`` for
  its PUBACK (delivery goes on); ``closed`` -> ``ready``; ``rejected`` -> ``failed`` for
  ``rejected_display_s``, then ``ready``, and the next hold opens a new incident.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.core.frames import LedMode

ACK_STATUSES = ("received", "assigned", "closed", "rejected")


@dataclass(frozen=True, slots=True)
class SendRequest:
    incident_id: str
    sequence: int
    created_at: datetime
    held_ms: int
    source: str


@dataclass(frozen=True, slots=True)
class SendCancel:
    incident_id: str
    sequence: int
    cancelled_at: datetime


Action = SendRequest | SendCancel


@dataclass(slots=True)
class Incident:
    incident_id: str
    opened_at: float  # monotonic
    opened_utc: datetime
    sequence: int = 1
    acked: bool = False
    # sequence number -> monotonic time it was queued, until its PUBACK
    undelivered: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ack:
    incident_id: str
    status: str
    message: str | None = None
    eta_minutes: int | None = None


class IncidentController:
    def __init__(
        self,
        *,
        cancel_window_s: float,
        deliver_timeout_s: float,
        cancelled_display_s: float = 3.0,
        rejected_display_s: float = 10.0,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.cancel_window_s = cancel_window_s
        self.deliver_timeout_s = deliver_timeout_s
        self.cancelled_display_s = cancelled_display_s
        self.rejected_display_s = rejected_display_s
        self._new_id = new_id
        self.incident: Incident | None = None
        self._transient: tuple[LedMode, float] | None = None  # (mode, until)
        self.healthy = False

    # -- inputs -----------------------------------------------------------------------------

    def on_hold(self, now: float, now_utc: datetime, held_ms: int, source: str) -> list[Action]:
        self._transient = None
        incident = self.incident
        if incident is None:
            incident = Incident(self._new_id(), opened_at=now, opened_utc=now_utc)
            self.incident = incident
            incident.undelivered[1] = now
            return [SendRequest(incident.incident_id, 1, now_utc, held_ms, source)]
        if now - incident.opened_at <= self.cancel_window_s:
            self.incident = None
            self._transient = (LedMode.CANCELLED, now + self.cancelled_display_s)
            return [SendCancel(incident.incident_id, incident.sequence, now_utc)]
        incident.sequence += 1
        incident.undelivered[incident.sequence] = now
        return [SendRequest(incident.incident_id, incident.sequence, now_utc, held_ms, source)]

    def on_delivered(self, incident_id: str, sequence: int) -> None:
        """The broker acknowledged (PUBACK) request ``sequence`` of ``incident_id``."""
        incident = self.incident
        if incident is not None and incident.incident_id == incident_id:
            incident.undelivered.pop(sequence, None)

    def on_ack(self, ack: Ack, now: float) -> bool:
        """Apply a backend ack; False when it is for no open incident (counted by the caller)."""
        incident = self.incident
        if incident is None or incident.incident_id != ack.incident_id:
            return False
        # An ack proves the backend has the request, whatever the PUBACK bookkeeping says.
        incident.undelivered.clear()
        if ack.status in ("received", "assigned"):
            incident.acked = True
        elif ack.status == "closed":
            self.incident = None
        elif ack.status == "rejected":
            self.incident = None
            self._transient = (LedMode.FAILED, now + self.rejected_display_s)
        return True

    def restore(self, incident: Incident) -> None:
        """Take over an incident that was open when the agent last stopped."""
        self.incident = incident

    # -- derived state ----------------------------------------------------------------------

    def led(self, now: float) -> LedMode:
        incident = self.incident
        if incident is not None:
            if incident.undelivered and (
                now - min(incident.undelivered.values()) >= self.deliver_timeout_s
            ):
                return LedMode.FAILED
            return LedMode.CONNECTED if incident.acked else LedMode.CALLING
        if self._transient is not None and now < self._transient[1]:
            return self._transient[0]
        return LedMode.READY if self.healthy else LedMode.OFF

    def deadline(self, now: float) -> float | None:
        """The next time :meth:`led` may change without an input."""
        times: list[float] = []
        incident = self.incident
        if incident is not None and incident.undelivered:
            due = min(incident.undelivered.values()) + self.deliver_timeout_s
            if due > now:
                times.append(due)
        if self._transient is not None and self._transient[1] > now:
            times.append(self._transient[1])
        return min(times) if times else None


def parse_ack(payload: bytes) -> Ack | str:
    """Decode a backend ack (SPEC §5); a string says why it was rejected."""
    if len(payload) > 4096:
        return "too_large"
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "bad_json"
    if not isinstance(doc, dict):
        return "not_an_object"
    incident_id = doc.get("incident_id")
    status = doc.get("status")
    if not isinstance(incident_id, str) or status not in ACK_STATUSES:
        return "bad_fields"
    try:
        uuid.UUID(incident_id)
    except ValueError:
        return "bad_incident_id"
    message = doc.get("message")
    eta = doc.get("eta_minutes")
    if message is not None and not isinstance(message, str):
        return "bad_fields"
    if eta is not None and (isinstance(eta, bool) or not isinstance(eta, int) or eta < 0):
        return "bad_fields"
    return Ack(incident_id, str(status), message, eta)


def resumed(
    incident_id: str,
    sequence: int,
    *,
    opened_wall: float,
    acked: bool,
    undelivered_wall: dict[int, float],
    now: float,
    wall_now: float,
) -> Incident:
    """An incident as it was when the agent stopped, moved onto this run's monotonic clock.

    ``opened_wall`` and ``undelivered_wall`` (sequence -> when it was queued) are unix times
    from the outbox; an age below zero (the wall clock went back) counts as zero.
    """
    return Incident(
        incident_id,
        opened_at=now - max(0.0, wall_now - opened_wall),
        opened_utc=datetime.fromtimestamp(opened_wall, UTC),
        sequence=sequence,
        acked=acked,
        undelivered={seq: now - (wall_now - at) for seq, at in undelivered_wall.items()},
    )
