"""The CAN controller state from error frames (agent.core.controller).

The error frames are written out by hand from linux/can/error.h (ids with CAN_ERR_FLAG
0x20000000, classes 0x040 bus-off, 0x004 controller, 0x100 restarted; data[1] 0x10/0x20
RX/TX passive, 0x40 back to active), not built with the module's constants.
"""

from __future__ import annotations

from agent.core.controller import ControllerTracker, ErrorFrame, Transition
from agent.core.request import CAN_STATES
from hw_sim.contract import errors as schema_errors

BUS_OFF = ErrorFrame.decode(0x20000040, bytes(8))
RESTARTED = ErrorFrame.decode(0x20000100, bytes(8))
TX_PASSIVE = ErrorFrame.decode(0x20000004, bytes([0, 0x20, 0, 0, 0, 0, 0, 0]))
RX_WARNING = ErrorFrame.decode(0x20000004, bytes([0, 0x04, 0, 0, 0, 0, 0, 0]))
ACTIVE = ErrorFrame.decode(0x20000004, bytes([0, 0x40, 0, 0, 0, 0, 0, 0]))
PROTOCOL = ErrorFrame.decode(0x20000008, bytes(8))


def opened() -> ControllerTracker:
    tracker = ControllerTracker()
    assert tracker.opened(keeps_controller=True) == Transition("ok")
    return tracker


def test_the_flag_is_optional_and_short_data_reads_as_zero() -> None:
    assert ErrorFrame.decode(0x040, b"") == ErrorFrame(0x40, 0)
    assert ErrorFrame.decode(0x20000004, b"\x00\x10") == ErrorFrame(0x04, 0x10)


def test_bus_off_then_restarted_is_one_episode_and_a_recovery() -> None:
    tracker = opened()
    assert tracker.error_frame(BUS_OFF) == Transition("bus_off")
    assert tracker.error_frame(BUS_OFF) is None  # repeated report: still one episode
    assert tracker.error_frame(RESTARTED) == Transition("ok", recovered=True)
    c = tracker.counters
    assert (c["bus_off_episodes"], c["can_err_bus_off"], c["can_restarts"]) == (1, 2, 1)
    assert c["bus_off_recoveries"] == 1


def test_a_valid_frame_ends_a_bus_off_but_not_an_error_passive() -> None:
    tracker = opened()
    tracker.error_frame(BUS_OFF)
    assert tracker.valid_frame() == Transition("ok", recovered=True)
    assert tracker.counters["can_restarts"] == 0
    assert tracker.error_frame(TX_PASSIVE) == Transition("error_passive")
    assert tracker.valid_frame() is None  # an error-passive controller still receives
    assert tracker.error_frame(RX_WARNING) is None
    assert tracker.error_frame(ACTIVE) == Transition("ok")
    c = tracker.counters
    assert (c["can_err_passive"], c["can_err_warning"], c["can_err_active"]) == (1, 1, 1)


def test_reopening_a_socketcan_socket_does_not_end_a_bus_off() -> None:
    tracker = opened()
    tracker.error_frame(BUS_OFF)
    assert tracker.opened(keeps_controller=True) is None
    assert tracker.state == "bus_off"
    assert tracker.opened(keeps_controller=False) == Transition("ok", recovered=True)


def test_down_and_reopened_is_a_recovery() -> None:
    tracker = opened()
    tracker.error_frame(BUS_OFF)
    assert tracker.failed() == Transition("down")
    assert tracker.error_frame(ACTIVE) is None  # no controller report lifts a down link
    assert tracker.opened(keeps_controller=True) == Transition("ok", recovered=True)
    assert tracker.counters["bus_off_recoveries"] == 0  # it went down, not back from bus-off


def test_classes_not_asked_for_are_counted_only() -> None:
    tracker = opened()
    assert tracker.error_frame(PROTOCOL) is None
    assert tracker.counters["can_err_other"] == 1
    assert tracker.state == "ok"


def test_every_state_is_a_valid_status() -> None:
    base = {
        "state": "online",
        "since": "2024-01-01T00:00:00.000Z",
        "version": "1",
        "button": "ok",
        "gps": "fix",
        "open_incident": None,
        "outbox_pending": 0,
    }
    for can in (*CAN_STATES, "unknown", "error"):
        assert schema_errors("status", {**base, "can": can}) == [], can
