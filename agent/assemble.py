"""What the operator gets, gathered at the moment it is sent (SPEC §5): who, which car, where
(with the country and locality from offline geocoding), what is wrong, and the coverage.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from agent.config import Config
from agent.core.coverage import evaluate
from agent.core.geo import Geocoder, GeoDataError, Place
from agent.core.incident import SendRequest
from agent.core.inference import infer
from agent.core.location import LocationTracker
from agent.core.request import UNKNOWN_COVERAGE, Trigger, build_request, vehicle_json
from agent.inputs.vehicle_bus import VehicleBus

log = logging.getLogger("agent")


class Assembler:
    def __init__(
        self, config: Config, car: VehicleBus, location: LocationTracker, geocoder: Geocoder
    ) -> None:
        self.config = config
        self.car = car
        self.location = location
        self.geocoder = geocoder
        self.counters: dict[str, int] = {}

    def warm(self) -> None:
        """Map the geodata now (a few ms, a few MB) rather than during the first call."""
        try:
            self.geocoder.load()
        except GeoDataError as exc:
            self._geo_failed(exc)

    def _geo_failed(self, exc: GeoDataError) -> None:
        self.counters["geo_errors"] = self.counters.get("geo_errors", 0) + 1
        log.error("offline geocoding unavailable: %s", exc)

    def request(
        self, action: SendRequest, now: float, opened_utc: datetime | None
    ) -> dict[str, Any]:
        vehicle, car = self.car.vehicle, self.car
        status, tyres, safety = vehicle.current(now)
        problem = infer(vehicle.category, status, tyres, safety)
        if car.vin != car.configured_vin:
            problem = replace(
                problem,
                evidence=(
                    *problem.evidence,
                    f"the gateway reports VIN {car.vin}, the configuration says "
                    f"{car.configured_vin}",
                ),
            )
        location = self.location.snapshot(now, action.created_at)
        place = self.locate(location)
        return build_request(
            incident_id=action.incident_id,
            sequence=action.sequence,
            created_at=action.created_at,
            trigger=Trigger(action.source, action.held_ms, vehicle.category),
            contact=self.config.contact,
            vehicle=vehicle_json(self.config.vehicle, car.vin, car.vin_source),
            location=location,
            problem=problem,
            vehicle_state=vehicle.snapshot(now),
            coverage=self._coverage(
                location, place, problem.category, action.created_at, opened_utc
            ),
        )

    def snapshot(self, now: float, now_utc: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
        """The location (geocoded) and the vehicle state now, for an update."""
        location = self.location.snapshot(now, now_utc)
        self.locate(location)
        return location, self.car.vehicle.snapshot(now)

    def locate(self, location: dict[str, Any]) -> Place | None:
        """Fill country and locality (offline geocoding) into a location snapshot."""
        lat, lon = location.get("lat"), location.get("lon")
        if lat is None or lon is None:
            return None
        try:
            place = self.geocoder.lookup(lat, lon)
        except GeoDataError as exc:
            self._geo_failed(exc)
            return None
        location["country"] = place.country
        location["locality"] = place.locality
        return place

    def _coverage(
        self,
        location: dict[str, Any],
        place: Place | None,
        category: str,
        now_utc: datetime,
        opened_utc: datetime | None,
    ) -> dict[str, Any]:
        profile = self.config.coverage
        if profile is None:
            return dict(UNKNOWN_COVERAGE)
        started = [t for t in (self.car.immobilised_since, opened_utc) if t]
        vehicle = self.config.vehicle
        result = evaluate(
            profile,
            place=place,
            lat=location.get("lat"),
            lon=location.get("lon"),
            first_registration=vehicle.first_registration,
            registration_country=vehicle.registration_country,
            extension_until=vehicle.coverage_extension_until,
            category=category,
            immobilised_at=min(started) if started else None,
            now=now_utc,
        )
        if result.error is not None:
            self.counters["coverage_errors"] = self.counters.get("coverage_errors", 0) + 1
            log.error("coverage check failed (the request says 'unknown'): %s", result.error)
        return result.to_json()
