"""The incident lifecycle and LED modes with an injected clock (SPEC §4)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from agent.core.frames import LedMode
from agent.core.incident import Ack, IncidentController, SendCancel, SendRequest, parse_ack
from agent.core.request import update_due

T0 = datetime(2026, 11, 24, 22, 0, tzinfo=UTC)
IDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 10)]


@pytest.fixture
def ctl() -> IncidentController:
    ids = itertools.cycle(IDS)
    controller = IncidentController(
        cancel_window_s=8, deliver_timeout_s=60, new_id=lambda: next(ids)
    )
    controller.healthy = True
    return controller


def test_idle_led_is_ready_when_healthy(ctl: IncidentController) -> None:
    assert ctl.led(0) is LedMode.READY
    ctl.healthy = False
    assert ctl.led(0) is LedMode.OFF


def test_hold_opens_and_acks_drive_the_led(ctl: IncidentController) -> None:
    [action] = ctl.on_hold(10.0, T0, 2000, "can")
    assert action == SendRequest(IDS[0], 1, T0, 2000, "can")
    assert ctl.led(10.0) is LedMode.CALLING
    ctl.on_delivered(IDS[0], 1)
    assert ctl.led(11.0) is LedMode.CALLING  # PUBACK is not the backend's ack
    assert ctl.on_ack(Ack(IDS[0], "received"), 12.0)
    assert ctl.led(12.0) is LedMode.CONNECTED
    assert ctl.on_ack(Ack(IDS[0], "assigned", eta_minutes=25), 13.0)
    assert ctl.led(13.0) is LedMode.CONNECTED
    assert ctl.on_ack(Ack(IDS[0], "closed"), 14.0)
    assert ctl.incident is None
    assert ctl.led(14.0) is LedMode.READY


def test_hold_within_cancel_window_cancels(ctl: IncidentController) -> None:
    ctl.on_hold(10.0, T0, 2000, "can")
    [action] = ctl.on_hold(18.0, T0, 2000, "can")  # exactly at the window's edge
    assert action == SendCancel(IDS[0], 1, T0)
    assert ctl.incident is None
    assert ctl.led(18.0) is LedMode.CANCELLED
    assert ctl.deadline(18.0) == 21.0
    assert ctl.led(21.0) is LedMode.READY


def test_hold_after_cancel_window_resends_same_incident(ctl: IncidentController) -> None:
    ctl.on_hold(10.0, T0, 2000, "can")
    [again] = ctl.on_hold(18.5, T0, 2000, "can")
    assert again == SendRequest(IDS[0], 2, T0, 2000, "can")
    [third] = ctl.on_hold(30.0, T0, 2100, "can")
    assert (third.incident_id, third.sequence) == (IDS[0], 3)


def test_failed_after_deliver_timeout_then_recovers(ctl: IncidentController) -> None:
    ctl.on_hold(10.0, T0, 2000, "can")
    assert ctl.deadline(10.0) == 70.0
    assert ctl.led(69.9) is LedMode.CALLING
    assert ctl.led(70.0) is LedMode.FAILED
    ctl.on_delivered(IDS[0], 1)  # delivery went on in the background and got through
    assert ctl.led(71.0) is LedMode.CALLING


def test_ack_before_puback_still_counts(ctl: IncidentController) -> None:
    ctl.on_hold(10.0, T0, 2000, "can")
    ctl.on_ack(Ack(IDS[0], "received"), 80.0)
    assert ctl.led(80.0) is LedMode.CONNECTED


def test_rejected_shows_failed_then_new_incident(ctl: IncidentController) -> None:
    ctl.on_hold(10.0, T0, 2000, "can")
    ctl.on_ack(Ack(IDS[0], "rejected", message="no contract"), 12.0)
    assert ctl.led(12.0) is LedMode.FAILED
    assert ctl.led(22.0) is LedMode.READY
    [action] = ctl.on_hold(30.0, T0, 2000, "can")
    assert isinstance(action, SendRequest)
    assert action.incident_id == IDS[1]


def test_ack_for_other_incident_is_refused(ctl: IncidentController) -> None:
    assert not ctl.on_ack(Ack(IDS[5], "received"), 1.0)
    ctl.on_hold(10.0, T0, 2000, "can")
    assert not ctl.on_ack(Ack(IDS[5], "closed"), 11.0)
    assert ctl.incident is not None


@pytest.mark.parametrize(
    ("payload", "result"),
    [
        (b'{"incident_id": "%s", "status": "received"}' % IDS[0].encode(), Ack(IDS[0], "received")),
        (
            b'{"incident_id": "%s", "status": "assigned", "eta_minutes": 25, "message": "ok"}'
            % IDS[0].encode(),
            Ack(IDS[0], "assigned", "ok", 25),
        ),
        (b"not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[]", "not_an_object"),
        (b'{"incident_id": "x", "status": "received"}', "bad_incident_id"),
        (b'{"incident_id": "%s", "status": "maybe"}' % IDS[0].encode(), "bad_fields"),
        (
            b'{"incident_id": "%s", "status": "assigned", "eta_minutes": -1}' % IDS[0].encode(),
            "bad_fields",
        ),
        (b"{" * 5000, "too_large"),
    ],
)
def test_parse_ack(payload: bytes, result: object) -> None:
    assert parse_ack(payload) == result


# -- update_due (SPEC §5: updates on change, at most every 10 s) -------------------------------

LOC = {"lat": 46.95, "lon": 7.44, "fix": "3d", "trusted": True, "fix_age_s": 0.0}
STATE = {"battery_12v_v": 12.6, "dtcs": None}


@pytest.mark.parametrize(
    ("location", "state", "since", "due"),
    [
        (LOC, STATE, 30.0, False),  # nothing changed
        ({**LOC, "fix_age_s": 9.0}, STATE, 30.0, False),  # only the fix aged
        ({**LOC, "lat": 46.9501}, STATE, 30.0, False),  # 11 m: not a move
        ({**LOC, "lat": 46.9510}, STATE, 30.0, True),  # 111 m
        ({**LOC, "lat": 46.9510}, STATE, 9.9, False),  # ... but not within 10 s
        ({**LOC, "fix": "last_known", "trusted": False}, STATE, 30.0, True),
        (LOC, {**STATE, "dtcs": ["P0A0F-2F"]}, 30.0, True),  # late DTCs
        ({**LOC, "lat": None, "lon": None}, STATE, 30.0, True),
    ],
)
def test_update_due(
    location: dict[str, object], state: dict[str, object], since: float, due: bool
) -> None:
    assert update_due((LOC, STATE), location, state, since) is due
