"""The open incident across restarts (issue 14): kept in the outbox after every change, taken
up again at start-up, so that a restart (a watchdog kill, a power cut, an update) goes on
where the call was: its sequences, the ack, the cancel window, and the repeats of a request
the backend never answered. Nothing personal and no position is kept for that (SPEC §6): a
repeat after a restart is built again, with the same key, created_at and trigger.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime

from agent.core.clock import rfc3339_ms
from agent.core.incident import IncidentController, SendRequest, resumed
from agent.core.policy import CallPolicy
from agent.outbox import Outbox

log = logging.getLogger("agent")


class Continuity:
    def __init__(
        self,
        outbox: Outbox,
        incidents: IncidentController,
        policy: CallPolicy,
        wall_now: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.incidents = incidents
        self.policy = policy
        self._wall_now = wall_now  # the agent's wall clock (GPS time while the system's is wrong)

    def save(self) -> None:
        """What a restart needs: the sequences, the ack, and the request until it is acked."""
        incident = self.incidents.incident
        if incident is None:
            return
        key = self.policy.repeat_key()
        repeat = None
        if key is not None:
            created_at = rfc3339_ms(key.created_at)
            repeat = json.dumps(
                {"created_at": created_at, "held_ms": key.held_ms, "source": key.source}
            )
        self.outbox.save_incident(
            incident.incident_id,
            incident.sequence,
            incident.opened_utc.timestamp(),
            incident.acked,
            update_sequence=self.policy.update_sequence(incident.incident_id),
            repeat=repeat,
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
            wall_now=self._wall_now(),
        )
        self.incidents.restore(incident)
        repeat: SendRequest | None = None
        if stored.repeat is not None:
            try:
                facts = json.loads(stored.repeat)
                created_at = datetime.fromisoformat(facts["created_at"])
                held_ms, source = int(facts["held_ms"]), str(facts["source"])
            except (ValueError, KeyError, TypeError):
                log.error("the stored repeat of %s is unreadable: no repeats", stored.incident_id)
            else:
                repeat = SendRequest(
                    stored.incident_id, stored.sequence, created_at, held_ms, source
                )
        self.policy.restore(stored.incident_id, stored.update_sequence, repeat, now)
        log.info("restored open incident %s (sequence %d)", incident.incident_id, stored.sequence)
