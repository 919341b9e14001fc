"""Payload builders for the MQTT contract (SPEC §5). Pure: values in, JSON-ready dicts out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from agent.core.clock import iso_date, rfc3339_ms
from agent.core.inference import Problem
from agent.core.location import distance_m

SCHEMA = "assistance-request/1"


@dataclass(frozen=True, slots=True)
class Address:
    street: str | None
    postal_code: str | None
    city: str | None
    country: str | None


@dataclass(frozen=True, slots=True)
class Contact:
    name: str | None
    address: Address
    phone: str | None
    email: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": {
                "street": self.address.street,
                "postal_code": self.address.postal_code,
                "city": self.address.city,
                "country": self.address.country,
            },
            "phone": self.phone,
            "email": self.email,
        }


@dataclass(frozen=True, slots=True)
class VehicleProfile:
    vin: str
    registration_plate: str | None
    registration_country: str | None
    model: str | None
    colour: str | None
    first_registration: date | None
    coverage_extension_until: date | None


@dataclass(frozen=True, slots=True)
class Trigger:
    source: str  # "can" | "serial" | "cli"
    held_ms: int
    driver_category: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "held_ms": self.held_ms,
            "driver_category": self.driver_category,
        }


def vehicle_json(profile: VehicleProfile, vin: str, vin_source: str) -> dict[str, Any]:
    return {
        "vin": vin,
        "vin_source": vin_source,
        "registration_plate": profile.registration_plate,
        "registration_country": profile.registration_country,
        "model": profile.model,
        "colour": profile.colour,
        "first_registration": iso_date(profile.first_registration),
    }


def build_request(
    *,
    incident_id: str,
    sequence: int,
    created_at: datetime,
    trigger: Trigger,
    contact: Contact,
    vehicle: dict[str, Any],
    location: dict[str, Any],
    problem: Problem,
    vehicle_state: dict[str, Any],
    coverage: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "incident_id": incident_id,
        "sequence": sequence,
        "created_at": rfc3339_ms(created_at),
        "trigger": trigger.to_json(),
        "contact": contact.to_json(),
        "vehicle": vehicle,
        "location": location,
        "problem": problem.to_json(),
        "vehicle_state": vehicle_state,
        "coverage": coverage,
    }


def build_cancel(incident_id: str, sequence: int, cancelled_at: datetime) -> dict[str, Any]:
    return {
        "incident_id": incident_id,
        "sequence": sequence,
        "cancelled_at": rfc3339_ms(cancelled_at),
    }


def build_update(
    incident_id: str,
    sequence: int,
    sent_at: datetime,
    location: dict[str, Any],
    vehicle_state: dict[str, Any],
) -> dict[str, Any]:
    return {
        "incident_id": incident_id,
        "sequence": sequence,
        "sent_at": rfc3339_ms(sent_at),
        "location": location,
        "vehicle_state": vehicle_state,
    }


UNKNOWN_COVERAGE: dict[str, Any] = {
    "status": "unknown",
    "reasons": ["no coverage profile configured"],
    "valid_until": None,
    "country_covered": None,
    "reported_within_24h": None,
}


UPDATE_MIN_INTERVAL_S = 10.0
UPDATE_MOVE_M = 25.0


def update_due(
    last: tuple[dict[str, Any], dict[str, Any]] | None,
    location: dict[str, Any],
    vehicle_state: dict[str, Any],
    since_last_s: float,
    min_interval_s: float = UPDATE_MIN_INTERVAL_S,
) -> bool:
    """Whether an open incident needs an ``update`` (SPEC §5: on change, at most every 10 s).

    ``last`` is the (location, vehicle_state) the backend last got, in the request or an
    update. A change is: the car moved more than 25 m, the fix kind or its trust changed, or
    any vehicle_state value changed. The age of the fix alone is not a change.
    """
    if since_last_s < min_interval_s:
        return False
    if last is None:
        return True
    old_location, old_state = last
    if old_state != vehicle_state:
        return True
    if (old_location.get("fix"), old_location.get("trusted")) != (
        location.get("fix"),
        location.get("trusted"),
    ):
        return True
    lat1, lon1 = old_location.get("lat"), old_location.get("lon")
    lat2, lon2 = location.get("lat"), location.get("lon")
    if lat1 is None or lon1 is None or lat2 is None or lon2 is None:
        return (lat1, lon1) != (lat2, lon2)
    return distance_m(lat1, lon1, lat2, lon2) > UPDATE_MOVE_M


def encode(payload: dict[str, Any]) -> bytes:
    """A payload as it goes on the wire and into the outbox: compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


# What the status schema allows besides "unknown" (agent.core.controller.STATES). "error" is
# kept in the schema for documents from older agents; this one reports "down" instead.
CAN_STATES = ("ok", "error_passive", "bus_off", "down")


def build_status(
    state: str,
    *,
    since: str,
    version: str,
    button: str,
    gps: str,
    can: str,
    open_incident: str | None,
    outbox_pending: int,
    oldest_pending_s: float | None,
    storage: str,
    counters: dict[str, int],
    clock: str | None = None,
    broker: str | None = None,
) -> dict[str, Any]:
    """The retained status document (SPEC §6): health and counters, never a position."""
    return {
        "state": state,
        "since": since,
        "version": version,
        "button": button,
        "gps": gps,
        "can": can if can in CAN_STATES else "unknown",
        "open_incident": open_incident,
        "outbox_pending": outbox_pending,
        "oldest_pending_s": None if oldest_pending_s is None else round(oldest_pending_s, 1),
        "storage": storage,
        "counters": {name: n for name, n in sorted(counters.items()) if n},
        **({} if clock is None else {"clock": clock}),
        **({} if broker is None else {"broker": broker}),
    }
