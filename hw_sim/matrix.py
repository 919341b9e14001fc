"""The simulators' codec for the vehicle matrix (SPEC §2), written apart from the agent's.

The ECUs in ``hw_sim`` and the HIL rig build and read their frames here, never with
``agent.core``: a layout bug shared by both sides would pass every integration test. So the
pieces come from elsewhere: the layout and the scaling from the DBC through cantools (with
choice names, not codes, where the DBC has them), the E2E byte from crccheck's
``Crc8SaeJ1850``, and the enums, the "not available" codes and the alive counters are written
out again from the SPEC. :class:`SimMatrix` checks at load time that the DBC agrees with them.
``tests/test_matrix_oracle.py`` holds the agent's codec against this one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from enum import IntEnum
from pathlib import Path
from typing import Any, Final

import cantools
from crccheck.crc import Crc8SaeJ1850

# hw_sim/data links to the repository's config/ (one copy of each file); a wheel holds the files.
DEFAULT_DBC: Final = Path(__file__).resolve().parent / "data" / "connect.dbc"

# The matrix's IDs and lengths as SPEC §2's table gives them (checked against the DBC).
CONNECT_BUTTON: Final = 0x3A1
CONNECT_LED: Final = 0x3A2
ASSIST_CATEGORY: Final = 0x3A3
VEHICLE_STATUS: Final = 0x3B0
TYRE_PRESSURE: Final = 0x3B1
SAFETY_STATUS: Final = 0x3B2
FRAMES: Final = {
    CONNECT_BUTTON: ("CONNECT_BUTTON", 8),
    CONNECT_LED: ("CONNECT_LED", 8),
    ASSIST_CATEGORY: ("ASSIST_CATEGORY", 2),
    VEHICLE_STATUS: ("VEHICLE_STATUS", 8),
    TYRE_PRESSURE: ("TYRE_PRESSURE", 4),
    SAFETY_STATUS: ("SAFETY_STATUS", 8),
}
#: Frames with byte 0 = CRC-8/SAE-J1850 over bytes 1..7 and an alive counter.
E2E_FRAMES: Final = frozenset({CONNECT_BUTTON, CONNECT_LED})
#: What the agent listens to: every frame of the matrix it does not send itself.
AGENT_RECEIVES: Final = (
    CONNECT_BUTTON,
    ASSIST_CATEGORY,
    VEHICLE_STATUS,
    TYRE_PRESSURE,
    SAFETY_STATUS,
)


class ButtonState(IntEnum):
    """ConnectButton, CONNECT_BUTTON byte 1 bits 4-5."""

    RELEASED = 0
    PRESSED = 1
    FAULT = 2
    NOT_AVAILABLE = 3


class LedMode(IntEnum):
    """LedMode, CONNECT_LED byte 1 bits 4-7."""

    OFF = 0
    READY = 1
    CALLING = 2
    CONNECTED = 3
    FAILED = 4
    CANCELLED = 5


#: ASSIST_CATEGORY byte 0; no entry for 0, "none" (the driver chose nothing: ``None`` here).
CATEGORIES: Final = {
    "breakdown": 1,
    "puncture": 2,
    "flat_battery": 3,
    "key_problem": 4,
    "accident": 5,
    "theft": 6,
    "vandalism": 7,
    "fire": 8,
    "other": 15,
}
# The DBC's choice names for "no value"; SPEC §2 spells them "n/a" and "none".
_NA: Final = "n/a"
_NONE: Final = "none"

#: Raw values that mean "not available" (SPEC §2), by signal; they decode to ``None``.
NOT_AVAILABLE: Final = {
    "Battery12V": 0xFFFF,
    "HvSoc": 0xFF,
    "RangeKm": 0xFFFF,
    "SpeedKmh": 0xFF,
    "PressureFL": 0xFF,
    "PressureFR": 0xFF,
    "PressureRL": 0xFF,
    "PressureRR": 0xFF,
    "Ignition": 3,
    "CrashSeverity": 3,
}


@dataclass(frozen=True, slots=True)
class VehicleStatus:
    """VEHICLE_STATUS in the request's units; ``None`` is sent as the signal's n/a code."""

    battery_12v_v: float | None
    hv_soc_pct: float | None
    range_km: int | None
    ignition: str | None  # "off", "acc", "on"
    trailer_connected: bool
    hazard_lights: bool
    doors_locked: bool
    key_detected: bool
    speed_kmh: int | None


@dataclass(frozen=True, slots=True)
class TyrePressure:
    fl: int | None  # kPa
    fr: int | None
    rl: int | None
    rr: int | None


@dataclass(frozen=True, slots=True)
class SafetyStatus:
    airbag_deployed: bool
    crash_severity: int | None  # 0 none, 1 minor, 2 major
    alarm_triggered: bool
    tamper_detected: bool
    hv_thermal_event: bool
    immobilised: bool
    odometer_km: int
    active_dtc_count: int


# Which DBC signal carries which field (SPEC §2's signal names).
SIGNALS: Final[dict[type[Any], dict[str, str]]] = {
    VehicleStatus: {
        "battery_12v_v": "Battery12V",
        "hv_soc_pct": "HvSoc",
        "range_km": "RangeKm",
        "ignition": "Ignition",
        "trailer_connected": "TrailerConnected",
        "hazard_lights": "HazardLights",
        "doors_locked": "DoorsLocked",
        "key_detected": "KeyDetected",
        "speed_kmh": "SpeedKmh",
    },
    TyrePressure: {"fl": "PressureFL", "fr": "PressureFR", "rl": "PressureRL", "rr": "PressureRR"},
    SafetyStatus: {
        "airbag_deployed": "AirbagDeployed",
        "crash_severity": "CrashSeverity",
        "alarm_triggered": "AlarmTriggered",
        "tamper_detected": "TamperDetected",
        "hv_thermal_event": "HvThermalEvent",
        "immobilised": "Immobilised",
        "odometer_km": "OdometerKm",
        "active_dtc_count": "ActiveDtcCount",
    },
}
_FRAME_OF: Final[dict[type[Any], int]] = {
    VehicleStatus: VEHICLE_STATUS,
    TyrePressure: TYRE_PRESSURE,
    SafetyStatus: SAFETY_STATUS,
}
CarState = VehicleStatus | TyrePressure | SafetyStatus


class MatrixError(ValueError):
    """A frame this codec cannot build or does not accept; ``reason`` names why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def e2e_crc(body: bytes | bytearray) -> int:
    """CRC-8/SAE-J1850 of bytes 1..7 of a protected frame (crccheck, not the agent's)."""
    return int(Crc8SaeJ1850.calc(bytes(body)))


class E2EWatch:
    """A receiver's E2E check of one frame ID: CRC right and the alive counter not repeated."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: int | None = None

    def check(self, data: bytes | bytearray, counter: int) -> str | None:
        """The reason the frame is rejected (``bad_crc``, ``repeated_counter``) or None."""
        if data[0] != e2e_crc(data[1:8]):
            return "bad_crc"
        if counter == self.last:
            return "repeated_counter"
        self.last = counter
        return None


@functools.cache
def _load(dbc: Path) -> Any:
    """The parsed DBC, once a process: the codec only reads it."""
    return cantools.database.load_file(str(dbc), database_format="dbc", strict=True)


class SimMatrix:
    """Builds and reads the matrix's frames as the car's ECUs do, from the DBC.

    Each protected frame ID has its own alive counter, starting at 0 and counting mod 16;
    ``counter=`` sends a chosen one instead (a repeated or a skipped counter).
    """

    def __init__(self, dbc: Path = DEFAULT_DBC) -> None:
        self.db = _load(dbc)
        self.messages: dict[int, Any] = {}
        for frame_id, (name, length) in FRAMES.items():
            message = self.db.get_message_by_name(name)
            if message.frame_id != frame_id or message.length != length:
                raise ValueError(
                    f"{dbc}: {name} is 0x{message.frame_id:03X} with {message.length} bytes, "
                    f"SPEC §2 says 0x{frame_id:03X} with {length}"
                )
            self.messages[frame_id] = message
        self._check_choices(dbc)
        self._alive = dict.fromkeys(E2E_FRAMES, 0)
        self._watch = {frame_id: E2EWatch() for frame_id in E2E_FRAMES}

    def _check_choices(self, dbc: Path) -> None:
        """The DBC's value tables must name the codes as this module's enums do."""
        expected = {
            (CONNECT_BUTTON, "ConnectButton"): {0: "released", 1: "pressed", 2: "fault", 3: _NA},
            (CONNECT_LED, "LedMode"): {m.value: m.name.lower() for m in LedMode},
            (ASSIST_CATEGORY, "Category"): {0: _NONE} | {v: k for k, v in CATEGORIES.items()},
            (VEHICLE_STATUS, "Ignition"): {0: "off", 1: "acc", 2: "on", 3: _NA},
            (SAFETY_STATUS, "CrashSeverity"): {0: "none", 1: "minor", 2: "major", 3: _NA},
        }
        for (frame_id, signal), names in expected.items():
            found = self.messages[frame_id].get_signal_by_name(signal).choices or {}
            if {int(code): str(name) for code, name in found.items()} != names:
                raise ValueError(f"{dbc}: the value table of {signal} differs from SPEC §2")

    def cycle_s(self, frame_id: int) -> float | None:
        """The frame's period from the DBC's ``GenMsgCycleTime`` (None: sent on change only)."""
        cycle_ms = self.messages[frame_id].cycle_time
        return None if not cycle_ms else cycle_ms / 1000

    # -- building frames --------------------------------------------------------------------

    def encode_signals(
        self,
        frame_id: int,
        signals: dict[str, Any],
        *,
        counter: int | None = None,
        raw: bool = False,
    ) -> bytes:
        """Encode physical values or choice names (``raw``: codes as sent, unscaled).

        Protected frames get the alive counter and the CRC; every other signal must be given.
        """
        message = self.messages[frame_id]
        values = dict(signals)
        if frame_id in E2E_FRAMES:
            if counter is None:
                counter = self._alive[frame_id]
                self._alive[frame_id] = (counter + 1) % 16
            values |= {"Crc": 0, "AliveCounter": counter}
        # raw codes may lie outside the DBC's range (a Category of 200): a receiver's problem
        data = bytearray(message.encode(values, scaling=not raw, padding=False, strict=not raw))
        if frame_id in E2E_FRAMES:
            data[0] = e2e_crc(data[1:8])
        return bytes(data)

    def encode_button(self, state: int, *, counter: int | None = None) -> bytes:
        mode = ButtonState(state)
        return self.encode_signals(CONNECT_BUTTON, {"ConnectButton": mode.value}, counter=counter)

    def encode_led(self, mode: int, *, counter: int | None = None) -> bytes:
        """A CONNECT_LED frame, as the agent should send it (for tests of the roof's side)."""
        led = LedMode(mode)
        return self.encode_signals(CONNECT_LED, {"LedMode": led.value}, counter=counter)

    def encode_category(self, category: str | None) -> bytes:
        if category is not None and category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}")
        return self.encode_signals(ASSIST_CATEGORY, {"Category": category or _NONE})

    def encode_state(self, state: CarState) -> bytes:
        """VEHICLE_STATUS, TYRE_PRESSURE or SAFETY_STATUS for the values in ``state``."""
        frame_id = _FRAME_OF[type(state)]
        message = self.messages[frame_id]
        signals: dict[str, Any] = {}
        for field, signal in SIGNALS[type(state)].items():
            value = getattr(state, field)
            if signal in ("Ignition", "CrashSeverity") and value is None:
                value = _NA  # by the DBC's choice name; "off", "acc", "on" are names too
            elif value is None:
                conversion = message.get_signal_by_name(signal).conversion
                value = conversion.raw_to_scaled(NOT_AVAILABLE[signal], False)
            elif isinstance(value, bool):
                value = int(value)
            signals[signal] = value
        return self.encode_signals(frame_id, signals)

    # the names the agent's codec had, which bench/busgen.py and the console call
    def encode_vehicle_status(self, status: VehicleStatus) -> bytes:
        return self.encode_state(status)

    def encode_tyres(self, tyres: TyrePressure) -> bytes:
        return self.encode_state(tyres)

    def encode_safety(self, safety: SafetyStatus) -> bytes:
        return self.encode_state(safety)

    def reprotect(self, frame_id: int, data: bytes | bytearray) -> bytes:
        """A recorded protected frame with this sender's next alive counter and a fresh CRC;
        every other bit as recorded (a replayed trace stays valid for the receivers)."""
        message = self.messages[frame_id]
        if frame_id not in E2E_FRAMES:
            raise ValueError(f"0x{frame_id:03X} is not E2E protected")
        if len(data) != message.length:
            raise MatrixError("bad_dlc", f"0x{frame_id:03X} with {len(data)} bytes")
        counter = self._alive[frame_id]
        self._alive[frame_id] = (counter + 1) % 16
        zero = dict.fromkeys((s.name for s in message.signals), 0)
        e2e_bits = message.encode(zero | {"Crc": 0xFF, "AliveCounter": 0xF}, scaling=False)
        fresh = message.encode(zero | {"AliveCounter": counter}, scaling=False)
        out = bytearray(
            (byte & ~mask & 0xFF) | new
            for byte, mask, new in zip(data, e2e_bits, fresh, strict=True)
        )
        out[0] = e2e_crc(out[1:8])
        return bytes(out)

    @staticmethod
    def crc_ok(data: bytes | bytearray) -> bool:
        """Byte 0 is the CRC of bytes 1..7 (a protected frame's check without its counter)."""
        return len(data) == 8 and data[0] == e2e_crc(data[1:8])

    # -- reading frames ---------------------------------------------------------------------

    def raw_signals(self, frame_id: int, data: bytes | bytearray) -> dict[str, int]:
        """The raw value of every signal, after the DLC check (no E2E check)."""
        message = self.messages.get(frame_id)
        if message is None:
            raise MatrixError("unknown_id", f"0x{frame_id:03X} is not in the matrix")
        if len(data) != message.length:
            raise MatrixError("bad_dlc", f"0x{frame_id:03X} with {len(data)} bytes")
        raw: dict[str, int] = message.decode(bytes(data), decode_choices=False, scaling=False)
        return raw

    def _checked(self, frame_id: int, data: bytes | bytearray) -> dict[str, Any]:
        raw = self.raw_signals(frame_id, data)
        if frame_id in E2E_FRAMES:
            reason = self._watch[frame_id].check(data, raw["AliveCounter"])
            if reason is not None:
                raise MatrixError(reason, f"0x{frame_id:03X} {bytes(data).hex()}")
        decoded: dict[str, Any] = self.messages[frame_id].decode(
            bytes(data), decode_choices=True, scaling=True
        )
        return decoded

    def reset_watch(self) -> None:
        """Forget the alive counters received (the sender restarted)."""
        for watch in self._watch.values():
            watch.last = None

    def decode_led(self, data: bytes | bytearray) -> LedMode:
        """The roof module's side: the LED mode of a CONNECT_LED frame, E2E checked."""
        return LedMode(_coded(self._checked(CONNECT_LED, data), "LedMode", LedMode))

    def decode_button(self, data: bytes | bytearray) -> ButtonState:
        return ButtonState(
            _coded(self._checked(CONNECT_BUTTON, data), "ConnectButton", ButtonState)
        )

    def decode_category(self, data: bytes | bytearray) -> str | None:
        name = _choice(self._checked(ASSIST_CATEGORY, data), "Category")
        return None if name == _NONE else name

    def decode_state(self, frame_id: int, data: bytes | bytearray) -> CarState:
        """VEHICLE_STATUS, TYRE_PRESSURE or SAFETY_STATUS into the car's values."""
        kind = next(k for k, fid in _FRAME_OF.items() if fid == frame_id)
        physical = self._checked(frame_id, data)
        raw = self.raw_signals(frame_id, data)
        message = self.messages[frame_id]
        values: dict[str, Any] = {}
        for field in fields(kind):
            signal = SIGNALS[kind][field.name]
            if NOT_AVAILABLE.get(signal) == raw[signal]:
                values[field.name] = None
            elif signal == "Ignition":
                values[field.name] = _choice(physical, signal)
            elif signal == "CrashSeverity":
                values[field.name] = raw[signal]
            elif field.type == "bool":
                values[field.name] = bool(raw[signal])
            else:
                values[field.name] = _rounded(physical[signal], message.get_signal_by_name(signal))
        state: CarState = kind(**values)
        return state


def _coded(decoded: dict[str, Any], signal: str, kind: type[IntEnum]) -> int:
    value = decoded[signal]
    code = value.value if hasattr(value, "value") else value
    if code not in kind._value2member_map_:
        raise MatrixError("bad_value", f"{signal} {code}")
    return int(code)


def _choice(decoded: dict[str, Any], signal: str) -> str:
    value = decoded[signal]
    if not hasattr(value, "name"):  # a code the DBC's value table does not name
        raise MatrixError("bad_value", f"{signal} {value}")
    return str(value.name)


def _rounded(value: float, signal: Any) -> float:
    """A scaled value to the signal's resolution (0.01 V, not 12.600000000000001)."""
    if isinstance(value, int):
        return value
    digits = len(f"{signal.scale:g}".partition(".")[2])
    return round(value, digits)
