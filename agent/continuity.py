"""The open incident across restarts (issue 14): kept in the outbox after every change, taken
up again at start-up, so that a restart (a watchdog kill, a power cut, an update) goes on
where the call was: its sequences, the ack, the cancel window, and the repeats of a request
the backend never answered.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from agent.core.incident import IncidentController, resumed
from agent.core.policy import CallPolicy
from agent.core.request import encode
from agent.outbox import Outbox

log = logging.getLogger("agent")


class Continuity:
    def __init__(self, outbox: Outbox, incidents: IncidentController, policy: CallPolicy) -> None:
        self.outbox = outbox
        self.incidents = incidents
        self.policy = policy

    def save(self) -> None:
        """What a restart needs: the sequences, the ack, and the request until it is acked."""
        incident = self.incidents.incident
        if incident is None:
            return
        request = None if incident.acked else self.policy.last_request
        self.outbox.save_incident(
            incident.incident_id,
            incident.sequence,
            incident.opened_utc.timestamp(),
            incident.acked,
            update_sequence=self.policy.update_sequence(incident.incident_id),
            request=None if request is None else encode(request),
        )

    def restore(self) -> None:
        stored = self.outbox.open_incident()
        if stored is None:
            return
        queued = {
            entry.sequence: entry.created_at
            for entry in self.outbox.pending()
            if entry.kind == "request" and entry.incident_id == stored.incident_id
        }
        now = time.monotonic()
        incident = resumed(
            stored.incident_id,
            stored.sequence,
            opened_wall=stored.opened_at,
            acked=stored.acked,
            undelivered_wall=queued,
            now=now,
            wall_now=time.time(),
        )
        self.incidents.restore(incident)
        request: dict[str, Any] | None = None
        if stored.request is not None:
            try:
                request = json.loads(stored.request)
            except ValueError:
                log.error("the stored request of %s is unreadable: no repeats", stored.incident_id)
        self.policy.restore(stored.incident_id, stored.update_sequence, request, now)
        log.info("restored open incident %s (sequence %d)", incident.incident_id, stored.sequence)
