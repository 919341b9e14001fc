"""Problem inference (SPEC §5): the category, the evidence and one readable sentence.

The driver's choice on ASSIST_CATEGORY wins. Otherwise the vehicle signals decide, in the
order the SPEC lists them: airbag or crash -> accident, thermal event -> fire, alarm -> theft,
tamper -> vandalism, a tyre far below the others -> puncture, a low 12 V battery ->
flat_battery, key not detected with doors locked -> key_problem; otherwise breakdown.
Every signal that points somewhere is listed as evidence, not only the winning one.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

from agent.core.frames import SafetyStatus, TyrePressure, VehicleStatus

#: Below this the 12 V battery cannot reliably crank or power the car's electronics.
LOW_BATTERY_V = 11.8
#: A tyre is "far below the others" under this fraction of the others' median ...
PUNCTURE_RATIO = 0.75
#: ... and by at least this much, so that small differences on soft tyres do not count.
PUNCTURE_MIN_DROP_KPA = 50

_SENTENCE = {
    "accident": "The car has been in an accident",
    "fire": "The car reports a fire or thermal event",
    "theft": "The car reports a theft or attempted theft",
    "vandalism": "The car reports vandalism or tampering",
    "puncture": "The car has a punctured tyre",
    "flat_battery": "The car's 12 V battery is flat",
    "key_problem": "The driver has a problem with the key",
    "breakdown": "The car has broken down",
    "other": "The driver needs assistance",
}
_TYRES = (("fl", "front left"), ("fr", "front right"), ("rl", "rear left"), ("rr", "rear right"))


@dataclass(frozen=True, slots=True)
class Problem:
    category: str
    description: str
    evidence: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "category": self.category,
            "description": self.description,
            "evidence": list(self.evidence),
        }


def _punctured(tyres: TyrePressure) -> list[tuple[str, int, int]]:
    """Tyres far below the median of the other known tyres: (name, kPa, others' median)."""
    values = {key: getattr(tyres, key) for key, _ in _TYRES}
    found = []
    for key, name in _TYRES:
        value = values[key]
        others = [v for k, v in values.items() if k != key and v is not None]
        if value is None or len(others) < 2:
            continue
        reference = median(others)
        if value < PUNCTURE_RATIO * reference and reference - value >= PUNCTURE_MIN_DROP_KPA:
            found.append((name, value, round(reference)))
    return found


def infer(
    driver_category: str | None,
    status: VehicleStatus | None,
    tyres: TyrePressure | None,
    safety: SafetyStatus | None,
) -> Problem:
    signals: list[tuple[str, str]] = []  # (category, evidence), in SPEC priority order
    if safety is not None:
        if safety.airbag_deployed:
            signals.append(("accident", "airbag deployed"))
        if safety.crash_severity in (1, 2):
            severity = "major" if safety.crash_severity == 2 else "minor"
            signals.append(("accident", f"{severity} crash detected"))
        if safety.hv_thermal_event:
            signals.append(("fire", "high-voltage battery thermal event"))
        if safety.alarm_triggered:
            signals.append(("theft", "alarm triggered"))
        if safety.tamper_detected:
            signals.append(("vandalism", "tampering detected"))
    if tyres is not None:
        for name, value, reference in _punctured(tyres):
            signals.append(("puncture", f"{name} tyre at {value} kPa, others {reference} kPa"))
    if status is not None:
        if status.battery_12v_v is not None and status.battery_12v_v < LOW_BATTERY_V:
            signals.append(("flat_battery", f"12 V battery at {status.battery_12v_v:.2f} V"))
        if status.doors_locked and not status.key_detected:
            signals.append(("key_problem", "key not detected with the doors locked"))

    evidence = [text for _, text in signals]
    if driver_category is not None:
        category = driver_category
        evidence.insert(0, f"driver selected {driver_category}")
    elif signals:
        category = signals[0][0]
    else:
        category = "breakdown"
        evidence.append("no vehicle signal points to a specific cause")
    sentence = _SENTENCE.get(category, _SENTENCE["other"])
    detail = [text for cat, text in signals if cat == category]
    if detail:
        sentence += " (" + "; ".join(detail) + ")"
    if status is not None and status.trailer_connected:
        sentence += ", with a trailer or caravan attached"
    return Problem(category, sentence + ".", tuple(evidence))
