"""The operator's board: what the assistance centre knows, built from the messages it received.

Pure: each method takes a message (already parsed JSON, with the wall time it arrived) and
returns the card or agent entry it changed, as a JSON-ready dict for the page. Nothing here
reads a clock, touches the network or writes a file; the board lives in the console process's
memory only, so personal data in the requests are gone when the process ends (SPEC §6).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "ACK_STATUSES",
    "MAX_TRAIL",
    "Board",
    "Card",
    "iso_ms",
    "parse_time",
]

ACK_STATUSES: Final = ("received", "assigned", "closed", "rejected")
MAX_TRAIL: Final = 20  # positions kept per card for the map's trail
MAX_CARDS: Final = 200  # oldest cards beyond this are dropped
MAX_INVALID: Final = 20


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 UTC time of the payloads (``...T..:..:..mmmZ``), or None."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else None


def iso_ms(moment: datetime) -> str:
    u = moment.astimezone(UTC)
    return f"{u:%Y-%m-%dT%H:%M:%S}.{u.microsecond // 1000:03d}Z"


def _position(location: object, at: str | None) -> dict[str, Any] | None:
    if not isinstance(location, dict):
        return None
    lat, lon = location.get("lat"), location.get("lon")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    when = location.get("fix_time") or location.get("time") or at
    return {"lat": float(lat), "lon": float(lon), "time": when}


@dataclass
class Card:
    """One incident as the operator sees it."""

    incident_id: str
    vin: str
    request: dict[str, Any] | None = None  # the latest sequence's request
    sequences: list[int] = field(default_factory=list)
    first_delivered: str | None = None
    delivered: str | None = None  # arrival of the latest sequence
    delay_ms: float | None = None  # created_at -> arrival, latest sequence
    duplicates: int = 0
    location: dict[str, Any] | None = None  # the latest known, request or update
    vehicle_state: dict[str, Any] | None = None
    updates: int = 0
    last_update: str | None = None
    trail: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    cancelled_at: str | None = None
    acks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if self.acks:
            return str(self.acks[-1]["status"])
        return "new"

    def _add_trail(self, position: dict[str, Any] | None) -> None:
        if position is None:
            return
        if self.trail and (self.trail[-1]["lat"], self.trail[-1]["lon"]) == (
            position["lat"],
            position["lon"],
        ):
            return
        self.trail.append(position)
        del self.trail[:-MAX_TRAIL]

    def to_json(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "vin": self.vin,
            "state": self.state,
            "request": self.request,
            "sequences": self.sequences,
            "first_delivered": self.first_delivered,
            "delivered": self.delivered,
            "delay_ms": self.delay_ms,
            "duplicates": self.duplicates,
            "location": self.location,
            "vehicle_state": self.vehicle_state,
            "updates": self.updates,
            "last_update": self.last_update,
            "trail": self.trail,
            "cancelled_at": self.cancelled_at,
            "acks": self.acks,
        }


class Board:
    """Cards by incident, agents by VIN, and the messages that failed validation."""

    def __init__(self) -> None:
        self.cards: dict[str, Card] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self.invalid: list[dict[str, Any]] = []

    def _card(self, incident_id: str, vin: str) -> Card:
        card = self.cards.get(incident_id)
        if card is None:
            card = self.cards[incident_id] = Card(incident_id, vin)
            while len(self.cards) > MAX_CARDS:
                self.cards.pop(next(iter(self.cards)))
        return card

    # -- messages from the agents ---------------------------------------------------------

    def on_request(self, vin: str, payload: dict[str, Any], arrived: datetime) -> Card:
        card = self._card(str(payload["incident_id"]), vin)
        sequence = int(payload["sequence"])
        at = iso_ms(arrived)
        if sequence in card.sequences:
            card.duplicates += 1
            return card
        card.sequences.append(sequence)
        if card.request is None or sequence >= max(card.sequences):
            card.request = copy.deepcopy(payload)
            card.delivered = at
            created = parse_time(payload.get("created_at"))
            card.delay_ms = (
                None if created is None else round((arrived - created).total_seconds() * 1e3, 1)
            )
            location = payload.get("location")
            card.location = location if isinstance(location, dict) else None
            state = payload.get("vehicle_state")
            card.vehicle_state = state if isinstance(state, dict) else None
            if card.location is not None:
                for old in reversed(card.location.get("recent") or []):
                    card._add_trail(_position(old, None))
                card._add_trail(_position(card.location, payload.get("created_at")))
        if card.first_delivered is None:
            card.first_delivered = at
        return card

    def on_update(self, vin: str, payload: dict[str, Any], arrived: datetime) -> Card:
        card = self._card(str(payload["incident_id"]), vin)
        card.updates += 1
        card.last_update = iso_ms(arrived)
        location = payload.get("location")
        if isinstance(location, dict):
            card.location = location
            card._add_trail(_position(location, payload.get("sent_at")))
        state = payload.get("vehicle_state")
        if isinstance(state, dict):
            card.vehicle_state = state
        return card

    def on_cancel(self, vin: str, payload: dict[str, Any], arrived: datetime) -> Card:
        card = self._card(str(payload["incident_id"]), vin)
        card.cancelled_at = str(payload.get("cancelled_at") or iso_ms(arrived))
        return card

    def on_status(self, vin: str, payload: dict[str, Any], arrived: datetime) -> dict[str, Any]:
        entry = {"vin": vin, "status": dict(payload), "seen": iso_ms(arrived)}
        self.agents[vin] = entry
        return entry

    def on_invalid(self, topic: str, problems: list[str], arrived: datetime) -> dict[str, Any]:
        entry = {"topic": topic, "problems": list(problems)[:5], "at": iso_ms(arrived)}
        self.invalid.append(entry)
        del self.invalid[:-MAX_INVALID]
        return entry

    # -- the operator's answers ------------------------------------------------------------

    def on_ack(
        self,
        incident_id: str,
        status: str,
        sent: datetime,
        *,
        eta_minutes: int | None = None,
        message: str | None = None,
        automatic: bool = False,
    ) -> Card | None:
        card = self.cards.get(incident_id)
        if card is None:
            return None
        ack: dict[str, Any] = {"status": status, "at": iso_ms(sent), "automatic": automatic}
        if eta_minutes is not None:
            ack["eta_minutes"] = eta_minutes
        if message:
            ack["message"] = message
        card.acks.append(ack)
        return card

    def snapshot(self) -> dict[str, Any]:
        return {
            "cards": [card.to_json() for card in self.cards.values()],
            "agents": list(self.agents.values()),
            "invalid": self.invalid,
        }
