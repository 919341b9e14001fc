"""The vehicle communication matrix (SPEC §2): CAN frames <-> typed values.

The DBC in ``config/`` describes the layout; this module adds what a DBC cannot say: which
frames are E2E protected, which raw values mean "not available" (they become ``None``, never
0), and the fixed DLC rule. Decoding is pure: bytes in, a typed event or a rejection out.
The simulators do not share it: they have a codec of their own, and
``tests/test_matrix_oracle.py`` holds the two against each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Final

import cantools

from agent.core.e2e import AliveCounter, E2EReceiver, E2EResult, crc8_sae_j1850, protect
from agent.errors import ConfigError

CONNECT_BUTTON: Final = 0x3A1
CONNECT_LED: Final = 0x3A2
ASSIST_CATEGORY: Final = 0x3A3
VEHICLE_STATUS: Final = 0x3B0
TYRE_PRESSURE: Final = 0x3B1
SAFETY_STATUS: Final = 0x3B2

#: Every ID the agent receives: the kernel filter list of the CAN adapter.
RECEIVED_IDS: Final = (
    CONNECT_BUTTON,
    ASSIST_CATEGORY,
    VEHICLE_STATUS,
    TYRE_PRESSURE,
    SAFETY_STATUS,
)
E2E_IDS: Final = frozenset({CONNECT_BUTTON, CONNECT_LED})
DLC: Final = {
    CONNECT_BUTTON: 8,
    CONNECT_LED: 8,
    ASSIST_CATEGORY: 2,
    VEHICLE_STATUS: 8,
    TYRE_PRESSURE: 4,
    SAFETY_STATUS: 8,
}
_NAMES: Final = {
    CONNECT_BUTTON: "CONNECT_BUTTON",
    CONNECT_LED: "CONNECT_LED",
    ASSIST_CATEGORY: "ASSIST_CATEGORY",
    VEHICLE_STATUS: "VEHICLE_STATUS",
    TYRE_PRESSURE: "TYRE_PRESSURE",
    SAFETY_STATUS: "SAFETY_STATUS",
}
# Raw values that mean "signal not available".
_NOT_AVAILABLE: Final = {
    "Battery12V": 0xFFFF,
    "HvSoc": 0xFF,
    "RangeKm": 0xFFFF,
    "SpeedKmh": 0xFF,
    "PressureFL": 0xFF,
    "PressureFR": 0xFF,
    "PressureRL": 0xFF,
    "PressureRR": 0xFF,
}


class ButtonState(IntEnum):
    RELEASED = 0
    PRESSED = 1
    FAULT = 2
    NOT_AVAILABLE = 3


class LedMode(IntEnum):
    OFF = 0
    READY = 1
    CALLING = 2
    CONNECTED = 3
    FAILED = 4
    CANCELLED = 5


CATEGORY_CODES: Final = {
    0: None,
    1: "breakdown",
    2: "puncture",
    3: "flat_battery",
    4: "key_problem",
    5: "accident",
    6: "theft",
    7: "vandalism",
    8: "fire",
    15: "other",
}
CATEGORY_BY_NAME: Final = {name: code for code, name in CATEGORY_CODES.items() if name}
IGNITION: Final = {0: "off", 1: "acc", 2: "on", 3: None}


@dataclass(frozen=True, slots=True)
class ButtonFrame:
    state: ButtonState


@dataclass(frozen=True, slots=True)
class CategoryFrame:
    category: str | None  # None: the driver chose nothing


@dataclass(frozen=True, slots=True)
class VehicleStatus:
    battery_12v_v: float | None
    hv_soc_pct: float | None
    range_km: int | None
    ignition: str | None
    trailer_connected: bool
    hazard_lights: bool
    doors_locked: bool
    key_detected: bool
    speed_kmh: int | None


@dataclass(frozen=True, slots=True)
class TyrePressure:
    fl: int | None
    fr: int | None
    rl: int | None
    rr: int | None


@dataclass(frozen=True, slots=True)
class SafetyStatus:
    airbag_deployed: bool
    crash_severity: int | None  # 0 none, 1 minor, 2 major; None = n/a
    alarm_triggered: bool
    tamper_detected: bool
    hv_thermal_event: bool
    immobilised: bool
    odometer_km: int
    active_dtc_count: int


Frame = ButtonFrame | CategoryFrame | VehicleStatus | TyrePressure | SafetyStatus


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that was ignored; ``reason`` is the counter it is counted under."""

    frame_id: int
    reason: str  # "bad_dlc", "bad_crc", "repeated_counter", "bad_value", "unknown_id"


def load_dbc(path: Path) -> Any:
    """Load the DBC, translating cantools' many failure kinds into a ConfigError."""
    try:
        db: Any = cantools.database.load_file(str(path), database_format="dbc", strict=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read DBC file {path}: {exc}") from exc
    except Exception as exc:  # cantools raises parser-specific exception types
        raise ConfigError(f"DBC file {path} is not a valid DBC: {exc}") from exc
    for frame_id, name in _NAMES.items():
        try:
            message = db.get_message_by_frame_id(frame_id)
        except KeyError:
            raise ConfigError(
                f"DBC file {path} lacks frame {name} (0x{frame_id:03X}) of the matrix"
            ) from None
        if message.length != DLC[frame_id]:
            raise ConfigError(
                f"DBC file {path}: {name} has length {message.length}, the matrix says "
                f"{DLC[frame_id]}"
            )
    return db


def _na(signals: dict[str, int], name: str, scale: float = 1.0) -> float | None:
    raw = signals[name]
    if raw == _NOT_AVAILABLE.get(name):
        return None
    return raw * scale


def _na_int(signals: dict[str, int], name: str, scale: int = 1) -> int | None:
    raw = signals[name]
    if raw == _NOT_AVAILABLE.get(name):
        return None
    return raw * scale


class Matrix:
    """Decoder and encoder for the matrix, with per-ID E2E receiver state."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self._messages = {fid: db.get_message_by_frame_id(fid) for fid in _NAMES}
        self._receivers = {fid: E2EReceiver() for fid in E2E_IDS}
        self._counters = {fid: AliveCounter() for fid in E2E_IDS}

    @classmethod
    def from_file(cls, path: Path) -> Matrix:
        return cls(load_dbc(path))

    def reset_counters(self) -> None:
        """Forget alive counters, e.g. after the bus came back from bus-off."""
        for receiver in self._receivers.values():
            receiver.reset()

    # -- receiving --------------------------------------------------------------------------

    def decode(self, frame_id: int, data: bytes | bytearray) -> Frame | Rejected:
        message = self._messages.get(frame_id)
        if message is None or frame_id == CONNECT_LED:
            return Rejected(frame_id, "unknown_id")
        if len(data) != DLC[frame_id]:
            return Rejected(frame_id, "bad_dlc")
        receiver = self._receivers.get(frame_id)
        if receiver is not None:
            result = receiver.check(data)
            if result is not E2EResult.OK:
                return Rejected(frame_id, result.value)
        raw: dict[str, int] = message.decode(bytes(data), decode_choices=False, scaling=False)
        try:
            return self._typed(frame_id, raw)
        except (KeyError, ValueError):
            return Rejected(frame_id, "bad_value")

    def _typed(self, frame_id: int, s: dict[str, int]) -> Frame:
        if frame_id == CONNECT_BUTTON:
            return ButtonFrame(ButtonState(s["ConnectButton"]))
        if frame_id == ASSIST_CATEGORY:
            return CategoryFrame(CATEGORY_CODES[s["Category"]])
        if frame_id == VEHICLE_STATUS:
            battery = _na(s, "Battery12V", 0.01)
            soc = _na(s, "HvSoc", 0.5)
            return VehicleStatus(
                battery_12v_v=None if battery is None else round(battery, 2),
                hv_soc_pct=soc,
                range_km=_na_int(s, "RangeKm"),
                ignition=IGNITION[s["Ignition"]],
                trailer_connected=bool(s["TrailerConnected"]),
                hazard_lights=bool(s["HazardLights"]),
                doors_locked=bool(s["DoorsLocked"]),
                key_detected=bool(s["KeyDetected"]),
                speed_kmh=_na_int(s, "SpeedKmh"),
            )
        if frame_id == TYRE_PRESSURE:
            return TyrePressure(
                fl=_na_int(s, "PressureFL", 2),
                fr=_na_int(s, "PressureFR", 2),
                rl=_na_int(s, "PressureRL", 2),
                rr=_na_int(s, "PressureRR", 2),
            )
        if frame_id == SAFETY_STATUS:
            severity = s["CrashSeverity"]
            return SafetyStatus(
                airbag_deployed=bool(s["AirbagDeployed"]),
                crash_severity=None if severity == 3 else severity,
                alarm_triggered=bool(s["AlarmTriggered"]),
                tamper_detected=bool(s["TamperDetected"]),
                hv_thermal_event=bool(s["HvThermalEvent"]),
                immobilised=bool(s["Immobilised"]),
                odometer_km=s["OdometerKm"],
                active_dtc_count=s["ActiveDtcCount"],
            )
        raise KeyError(frame_id)

    # -- sending ----------------------------------------------------------------------------

    def _encode(self, frame_id: int, raw: dict[str, int]) -> bytes:
        message = self._messages[frame_id]
        data: bytes = message.encode(raw, scaling=False, strict=True, padding=False)
        if frame_id in E2E_IDS:
            data = protect(data[1:8], self._counters[frame_id].next())
        return data

    def encode_led(self, mode: LedMode) -> bytes:
        return self._encode(CONNECT_LED, {"Crc": 0, "AliveCounter": 0, "LedMode": int(mode)})

    def encode_button(self, state: ButtonState) -> bytes:
        raw = {"Crc": 0, "AliveCounter": 0, "ConnectButton": int(state)}
        return self._encode(CONNECT_BUTTON, raw)

    def encode_category(self, category: str | None) -> bytes:
        code = 0 if category is None else CATEGORY_BY_NAME[category]
        return self._encode(ASSIST_CATEGORY, {"Category": code})

    def encode_vehicle_status(self, v: VehicleStatus) -> bytes:
        ignition = {name: code for code, name in IGNITION.items()}[v.ignition]
        raw = {
            "Battery12V": 0xFFFF if v.battery_12v_v is None else round(v.battery_12v_v * 100),
            "HvSoc": 0xFF if v.hv_soc_pct is None else round(v.hv_soc_pct * 2),
            "RangeKm": 0xFFFF if v.range_km is None else v.range_km,
            "Ignition": ignition,
            "TrailerConnected": int(v.trailer_connected),
            "HazardLights": int(v.hazard_lights),
            "DoorsLocked": int(v.doors_locked),
            "KeyDetected": int(v.key_detected),
            "SpeedKmh": 0xFF if v.speed_kmh is None else v.speed_kmh,
        }
        return self._encode(VEHICLE_STATUS, raw)

    def encode_tyres(self, t: TyrePressure) -> bytes:
        def kpa(value: int | None) -> int:
            return 0xFF if value is None else value // 2

        raw = {
            "PressureFL": kpa(t.fl),
            "PressureFR": kpa(t.fr),
            "PressureRL": kpa(t.rl),
            "PressureRR": kpa(t.rr),
        }
        return self._encode(TYRE_PRESSURE, raw)

    def encode_safety(self, s: SafetyStatus) -> bytes:
        raw = {
            "AirbagDeployed": int(s.airbag_deployed),
            "CrashSeverity": 3 if s.crash_severity is None else s.crash_severity,
            "AlarmTriggered": int(s.alarm_triggered),
            "TamperDetected": int(s.tamper_detected),
            "HvThermalEvent": int(s.hv_thermal_event),
            "Immobilised": int(s.immobilised),
            "OdometerKm": s.odometer_km,
            "ActiveDtcCount": s.active_dtc_count,
        }
        return self._encode(SAFETY_STATUS, raw)


def decode_led(data: bytes | bytearray) -> LedMode | None:
    """Decode a CONNECT_LED frame for observers; None when its DLC, CRC or mode is bad."""
    if len(data) != 8 or crc8_sae_j1850(bytes(data[1:8])) != data[0]:
        return None
    try:
        return LedMode(data[1] >> 4)
    except ValueError:
        return None
