"""The vehicle health snapshot: the latest VEHICLE_STATUS, TYRE_PRESSURE and SAFETY_STATUS.

Pure: frames go in with their monotonic arrival time; :meth:`VehicleState.snapshot` gives the
SPEC §5 ``vehicle_state`` object. A signal never received, or not received for ``stale_s``,
is ``null``: the operator must never read an old or invented value as current.
"""

from __future__ import annotations

from typing import Any

from agent.core.frames import SafetyStatus, TyrePressure, VehicleStatus


class VehicleState:
    def __init__(self, stale_s: float = 5.0) -> None:
        self.stale_s = stale_s
        self.status: VehicleStatus | None = None
        self.tyres: TyrePressure | None = None
        self.safety: SafetyStatus | None = None
        self._at: dict[str, float] = {}
        self.category: str | None = None  # the driver's choice on ASSIST_CATEGORY
        self.dtcs: list[str] | None = None  # filled by UDS when available

    def update(self, frame: VehicleStatus | TyrePressure | SafetyStatus, now: float) -> None:
        if isinstance(frame, VehicleStatus):
            self.status = frame
            self._at["status"] = now
        elif isinstance(frame, TyrePressure):
            self.tyres = frame
            self._at["tyres"] = now
        else:
            self.safety = frame
            self._at["safety"] = now

    def _fresh(self, key: str, now: float) -> bool:
        at = self._at.get(key)
        return at is not None and now - at <= self.stale_s

    def current(
        self, now: float
    ) -> tuple[VehicleStatus | None, TyrePressure | None, SafetyStatus | None]:
        """The frames that are current at ``now`` (stale ones are None)."""
        return (
            self.status if self._fresh("status", now) else None,
            self.tyres if self._fresh("tyres", now) else None,
            self.safety if self._fresh("safety", now) else None,
        )

    def snapshot(self, now: float) -> dict[str, Any]:
        status, tyres, safety = self.current(now)
        return {
            "battery_12v_v": status.battery_12v_v if status else None,
            "hv_soc_pct": status.hv_soc_pct if status else None,
            "range_km": status.range_km if status else None,
            "tyre_pressure_kpa": {
                "fl": tyres.fl if tyres else None,
                "fr": tyres.fr if tyres else None,
                "rl": tyres.rl if tyres else None,
                "rr": tyres.rr if tyres else None,
            },
            "ignition": status.ignition if status else None,
            "speed_kmh": status.speed_kmh if status else None,
            "trailer_connected": status.trailer_connected if status else None,
            "hazard_lights": status.hazard_lights if status else None,
            "doors_locked": status.doors_locked if status else None,
            "key_detected": status.key_detected if status else None,
            "airbag_deployed": safety.airbag_deployed if safety else None,
            "odometer_km": safety.odometer_km if safety else None,
            "dtcs": list(self.dtcs) if self.dtcs is not None else None,
        }
