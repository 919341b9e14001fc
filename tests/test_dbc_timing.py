"""The DBC's timing attributes (issue 16): ``GenMsgCycleTime`` and ``GenMsgSendType``.

Tools that read a DBC for timing (cantools, SavvyCAN, AWS IoT FleetWise's cansim) find the
periods in these Vector-style attributes. The expected table is SPEC §2's "cycle" column,
written out here by hand, not read from the DBC.
"""

from __future__ import annotations

import cantools
import pytest

from agent.core import frames as agent
from hw_sim import matrix as sim
from hw_sim.car import SimulatedCar

# SPEC §2: name -> (cycle in ms, or None for "on change" only; send type)
SPEC_TIMING = {
    "CONNECT_BUTTON": (100, "CyclicAndSpontaneous"),  # 100 ms and on change
    "CONNECT_LED": (500, "CyclicAndSpontaneous"),  # 500 ms and on change
    "ASSIST_CATEGORY": (None, "Spontaneous"),  # on change
    "VEHICLE_STATUS": (1000, "Cyclic"),
    "TYRE_PRESSURE": (1000, "Cyclic"),
    "SAFETY_STATUS": (1000, "CyclicAndSpontaneous"),  # 1000 ms and on change
}


@pytest.fixture(scope="module")
def db() -> cantools.database.can.Database:
    return cantools.database.load_file(str(sim.DEFAULT_DBC), database_format="dbc", strict=True)


def test_every_frame_has_the_specs_cycle_time_and_send_type(
    db: cantools.database.can.Database,
) -> None:
    assert sorted(m.name for m in db.messages) == sorted(SPEC_TIMING)
    for name, (cycle_ms, send_type) in SPEC_TIMING.items():
        message = db.get_message_by_name(name)
        assert message.cycle_time == cycle_ms, name
        assert message.send_type == send_type, name


def test_the_attributes_survive_cantools_writing_the_dbc_again(
    db: cantools.database.can.Database,
) -> None:
    again = cantools.database.load_string(db.as_dbc_string(), database_format="dbc", strict=True)
    for name, (cycle_ms, send_type) in SPEC_TIMING.items():
        message = again.get_message_by_name(name)
        assert (message.cycle_time, message.send_type) == (cycle_ms, send_type), name


def test_both_codecs_still_load_the_dbc_and_the_car_keeps_its_periods() -> None:
    agent.Matrix(agent.load_dbc(sim.DEFAULT_DBC))
    matrix = sim.SimMatrix()
    assert matrix.cycle_s(sim.CONNECT_BUTTON) == 0.1
    assert matrix.cycle_s(sim.VEHICLE_STATUS) == 1.0
    assert matrix.cycle_s(sim.ASSIST_CATEGORY) is None
    car = SimulatedCar(bus=None, matrix=matrix)  # type: ignore[arg-type]  # never started
    assert (car.button_period_s, car.status_period_s) == (0.1, 1.0)
