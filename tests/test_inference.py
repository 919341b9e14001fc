"""Problem inference, table-driven across every category (SPEC §5)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.core.frames import SafetyStatus, TyrePressure, VehicleStatus
from agent.core.inference import infer
from hw_sim.car import HEALTHY_SAFETY, HEALTHY_STATUS, HEALTHY_TYRES

S, T, X = HEALTHY_STATUS, HEALTHY_TYRES, HEALTHY_SAFETY

Signals = tuple[VehicleStatus | None, TyrePressure | None, SafetyStatus | None]

CASES: list[tuple[str, Signals, str, str]] = [
    ("healthy car", (S, T, X), "breakdown", "no vehicle signal"),
    ("no signals at all", (None, None, None), "breakdown", "no vehicle signal"),
    ("airbag", (S, T, replace(X, airbag_deployed=True)), "accident", "airbag deployed"),
    ("minor crash", (S, T, replace(X, crash_severity=1)), "accident", "minor crash detected"),
    ("major crash", (S, T, replace(X, crash_severity=2)), "accident", "major crash detected"),
    ("thermal", (S, T, replace(X, hv_thermal_event=True)), "fire", "thermal event"),
    ("alarm", (S, T, replace(X, alarm_triggered=True)), "theft", "alarm triggered"),
    ("tamper", (S, T, replace(X, tamper_detected=True)), "vandalism", "tampering detected"),
    ("flat tyre", (S, replace(T, rl=120), X), "puncture", "rear left tyre at 120 kPa"),
    ("low battery", (replace(S, battery_12v_v=10.9), T, X), "flat_battery", "at 10.90 V"),
    (
        "locked out",
        (replace(S, doors_locked=True, key_detected=False), T, X),
        "key_problem",
        "key not detected with the doors locked",
    ),
    (
        "accident wins over puncture",
        (S, replace(T, fl=100), replace(X, airbag_deployed=True)),
        "accident",
        "front left tyre",
    ),
]


@pytest.mark.parametrize(
    ("name", "signals", "category", "evidence"), CASES, ids=[c[0] for c in CASES]
)
def test_inference(name: str, signals: Signals, category: str, evidence: str) -> None:
    problem = infer(None, *signals)
    assert problem.category == category
    assert any(evidence in line for line in problem.evidence), problem.evidence
    assert problem.description.endswith(".")
    assert problem.description[0].isupper()


def test_crash_severity_not_available_is_no_evidence() -> None:
    assert infer(None, S, T, replace(X, crash_severity=None)).category == "breakdown"


def test_soft_tyres_all_round_are_not_a_puncture() -> None:
    assert infer(None, S, TyrePressure(180, 182, 178, 181), X).category == "breakdown"


def test_missing_tyre_values_do_not_mislead() -> None:
    assert infer(None, S, TyrePressure(None, None, None, 90), X).category == "breakdown"


@pytest.mark.parametrize(
    "category",
    [
        "breakdown",
        "puncture",
        "flat_battery",
        "key_problem",
        "accident",
        "theft",
        "vandalism",
        "fire",
        "other",
    ],
)
def test_driver_choice_wins(category: str) -> None:
    problem = infer(category, S, T, replace(X, airbag_deployed=True))
    assert problem.category == category
    assert problem.evidence[0] == f"driver selected {category}"
    assert "airbag deployed" in problem.evidence


def test_trailer_is_mentioned() -> None:
    problem = infer(None, replace(S, trailer_connected=True), T, X)
    assert "trailer" in problem.description
