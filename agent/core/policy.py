"""What to send and when, for the open incident (SPEC §5). Pure: the clock is passed in.

The incident controller decides the call itself (hold, cancel window, acks, the LED). This
policy decides the messages around it: the request as sent (kept for repeats), a repeat of
the request when the backend never answered, a location/vehicle update when something
changed enough, and the cancel. Each decision is an :class:`Outgoing` for the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.core.incident import IncidentController, SendCancel, SendRequest
from agent.core.request import UPDATE_MIN_INTERVAL_S, build_cancel, build_update, update_due


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for the outbox: ``kind`` is request, cancel or update."""

    kind: str
    incident_id: str
    sequence: int
    payload: dict[str, Any]


class CallPolicy:
    def __init__(
        self,
        incidents: IncidentController,
        ack_timeout_s: float,
        update_interval_s: float = UPDATE_MIN_INTERVAL_S,
    ) -> None:
        self.incidents = incidents
        self.ack_timeout_s = ack_timeout_s
        self.update_interval_s = update_interval_s
        self.last_request: dict[str, Any] | None = None  # the request as sent, for repeats
        self.delivered_at = 0.0  # the last request's PUBACK
        # what the backend last got for the open incident: (location, vehicle_state), when
        self._last_sent: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._last_sent_at = 0.0
        self._update_seq: dict[str, int] = {}
        self._rebuild: SendRequest | None = None  # a repeat to build again, after a restart

    def restore(
        self, incident_id: str, update_sequence: int, repeat: SendRequest | None, now: float
    ) -> None:
        """After a restart: go on counting updates, and repeat the unanswered request (rebuilt
        from ``repeat``: its key, created_at and trigger) after ``ack_timeout_s`` from now."""
        self._update_seq = {incident_id: update_sequence}
        self._rebuild = repeat
        if repeat is not None:
            self.delivered_at = now

    def repeat_key(self) -> SendRequest | None:
        """What a repeat of the last request is rebuilt from after a restart (no personal data,
        no position: SPEC §6), or None once the backend has acknowledged it."""
        incident, request = self.incidents.incident, self.last_request
        if incident is None or incident.acked:
            return None
        if request is None:
            return self._rebuild
        trigger = request["trigger"]
        return SendRequest(
            request["incident_id"],
            request["sequence"],
            datetime.fromisoformat(request["created_at"]),
            trigger["held_ms"],
            trigger["source"],
        )

    def update_sequence(self, incident_id: str) -> int:
        """The last update's sequence number for ``incident_id`` (0: none yet)."""
        return self._update_seq.get(incident_id, 0)

    def request_sent(self, payload: dict[str, Any], now: float) -> Outgoing:
        """A request built for the controller's ``SendRequest``: remember it, send it."""
        self.last_request = payload
        self._rebuild = None
        self._last_sent = (payload["location"], payload["vehicle_state"])
        self._last_sent_at = now
        return Outgoing("request", payload["incident_id"], payload["sequence"], payload)

    @staticmethod
    def cancel(action: SendCancel) -> Outgoing:
        payload = build_cancel(action.incident_id, action.sequence, action.cancelled_at)
        return Outgoing("cancel", action.incident_id, action.sequence, payload)

    def request_delivered(self, now: float) -> None:
        self.delivered_at = now

    def repeat(self, now: float) -> Outgoing | SendRequest | None:
        """The broker has the request but the backend never answered: the same request again.

        An ack can be lost in a broker that dies before delivering it; the same request (same
        id, sequence and created_at: a QoS-style duplicate) makes the backend answer again.
        Every ``ack_timeout_s`` until it does.
        """
        incident, request = self.incidents.incident, self.last_request
        if incident is None or incident.acked or incident.undelivered:
            return None
        key = self.repeat_key()
        if key is None or (key.incident_id, key.sequence) != (
            incident.incident_id,
            incident.sequence,
        ):
            return None
        if now - self.delivered_at < self.ack_timeout_s:
            return None
        self.delivered_at = now
        if request is None:  # after a restart: the caller builds it again, same key
            return key
        return Outgoing("request", incident.incident_id, incident.sequence, request)

    def update(
        self, now: float, now_utc: datetime, location: dict[str, Any], state: dict[str, Any]
    ) -> Outgoing | None:
        """An update when the position or the vehicle state changed enough since the last."""
        incident = self.incidents.incident
        if incident is None:
            return None
        since = now - self._last_sent_at
        if not update_due(self._last_sent, location, state, since, self.update_interval_s):
            return None
        sequence = self._update_seq.get(incident.incident_id, 0) + 1
        self._update_seq = {incident.incident_id: sequence}
        payload = build_update(incident.incident_id, sequence, now_utc, location, state)
        self._last_sent = (location, state)
        self._last_sent_at = now
        return Outgoing("update", incident.incident_id, sequence, payload)
