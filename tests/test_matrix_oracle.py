"""The agent's matrix codec held against the simulators' (issue 16).

``agent.core.frames.Matrix`` (cantools unscaled plus its own scaling, n/a table, enums and E2E)
against ``hw_sim.matrix`` (cantools scaled from the DBC, choice names, crccheck's
``Crc8SaeJ1850``): every frame and every signal of the DBC, random raw values with the n/a
codes, the boundaries and the codes no enum names, encoded by one and decoded by the other,
both ways, and the E2E byte and alive counter byte-exact. Hand-made vectors from SPEC §2 guard
what both read from the one DBC. A one-bit shift of a signal in the agent's Matrix, a wrong CRC
init or xor-out each make tests here fail (checked when this file was written).
"""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path
from typing import Any

import cantools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import frames as agent
from agent.core.e2e import crc8_sae_j1850
from hw_sim import matrix as sim

SETTINGS = settings(max_examples=300, deadline=None)
DB = cantools.database.load_file(str(sim.DEFAULT_DBC), strict=True)
E2E_SIGNALS = ("Crc", "AliveCounter")
ENUM_SIGNALS = ("ConnectButton", "LedMode", "Category")  # hw_sim.matrix's IntEnums, CATEGORIES
STATE_OF = {
    sim.VEHICLE_STATUS: (sim.VehicleStatus, agent.VehicleStatus),
    sim.TYRE_PRESSURE: (sim.TyrePressure, agent.TyrePressure),
    sim.SAFETY_STATUS: (sim.SafetyStatus, agent.SafetyStatus),
}
FRAME_IDS = sorted(message.frame_id for message in DB.messages)


AGENT_DB = agent.load_dbc(sim.DEFAULT_DBC)  # a database object of its own, not hw_sim's


def fresh() -> tuple[sim.SimMatrix, agent.Matrix]:
    """Both codecs with their alive counters and receivers at the start."""
    return sim.SimMatrix(), agent.Matrix(AGENT_DB)


def payload_signals(frame_id: int) -> list[Any]:
    return [s for s in DB.get_message_by_frame_id(frame_id).signals if s.name not in E2E_SIGNALS]


def raw_value(signal: Any) -> st.SearchStrategy[int]:
    """Any raw code the signal can carry, the edges and its "not available" code often."""
    top = (1 << signal.length) - 1  # past the DBC's range too: Category is a whole byte
    edges = {0, 1, top - 1, top, sim.NOT_AVAILABLE.get(signal.name, top)}
    return st.sampled_from(sorted(edges)) | st.integers(0, top)


def raw_frame(frame_id: int) -> st.SearchStrategy[dict[str, int]]:
    return st.fixed_dictionaries({s.name: raw_value(s) for s in payload_signals(frame_id)})


def close(a: Any, b: Any, scale: float) -> bool:
    """Equal, floats to within a quarter of the signal's resolution."""
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=0, abs_tol=scale / 4)
    return bool(a == b)


def assert_same_state(frame_id: int, mine: Any, theirs: Any) -> None:
    message = DB.get_message_by_frame_id(frame_id)
    for field, signal in sim.SIGNALS[type(mine)].items():
        a, b = getattr(mine, field), getattr(theirs, field)
        scale = message.get_signal_by_name(signal).scale
        assert (a is None) == (b is None), (field, a, b)
        assert a is None or close(a, b, scale), (field, a, b)


# -- the two codecs cover the same matrix -----------------------------------------------------


def test_every_dbc_frame_and_signal_is_in_both_codecs() -> None:
    mapped = {signal for fields in sim.SIGNALS.values() for signal in fields.values()}
    for message in DB.messages:
        assert sim.FRAMES[message.frame_id] == (message.name, message.length)
        assert agent.DLC[message.frame_id] == message.length
        for signal in message.signals:
            known = signal.name in mapped or signal.name in ENUM_SIGNALS
            assert known or (message.frame_id in sim.E2E_FRAMES and signal.name in E2E_SIGNALS)
    assert set(sim.AGENT_RECEIVES) == set(agent.RECEIVED_IDS)
    assert sim.E2E_FRAMES == agent.E2E_IDS
    for kind_sim, kind_agent in STATE_OF.values():
        assert [f.name for f in dataclasses.fields(kind_sim)] == [
            f.name for f in dataclasses.fields(kind_agent)
        ]
    assert {m.name: m.value for m in sim.LedMode} == {m.name: m.value for m in agent.LedMode}
    assert {m.name: m.value for m in sim.ButtonState} == {
        m.name: m.value for m in agent.ButtonState
    }
    assert sim.CATEGORIES == agent.CATEGORY_BY_NAME


# -- hand-made vectors: SPEC §2 written out as bytes --------------------------------------------

VECTORS = [
    # 12.6 V = 1260 = 0x04EC, 64.5 % = 129, 312 km = 0x0138, hazard (bit 3) + key (bit 5), 0 km/h
    (sim.VEHICLE_STATUS, "ec04813801280000"),
    # everything n/a: 0xFFFF, 0xFF, 0xFFFF, ignition 3, 0xFF
    (sim.VEHICLE_STATUS, "ffffffffff03ff00"),
    # ignition on (2), trailer (bit 2), doors locked (bit 4), 130 km/h, 11.95 V = 0x04AB
    (sim.VEHICLE_STATUS, "ab04ff0000168200"),
    (sim.TYRE_PRESSURE, "7d7e7cff"),  # 250, 252, 248 kPa, RR n/a
    # immobilised (bit 6), severity 0, 48,213 km = 0xBC55, no DTC
    (sim.SAFETY_STATUS, "4055bc0000000000"),
    # airbag, severity major (2 << 1), alarm, tamper, thermal: 0x3D; 0xFFFFFFFF km; 255 DTCs
    (sim.SAFETY_STATUS, "3dffffffffff0000"),
    (sim.ASSIST_CATEGORY, "0800"),  # fire
    (sim.ASSIST_CATEGORY, "0f00"),  # other
]
VALUES: list[Any] = [
    sim.VehicleStatus(12.6, 64.5, 312, "off", False, True, False, True, 0),
    sim.VehicleStatus(None, None, None, None, False, False, False, False, None),
    sim.VehicleStatus(11.95, None, 0, "on", True, False, True, False, 130),
    sim.TyrePressure(250, 252, 248, None),
    sim.SafetyStatus(False, 0, False, False, False, True, 48_213, 0),
    sim.SafetyStatus(True, 2, True, True, True, False, 0xFFFF_FFFF, 255),
    "fire",
    "other",
]


@pytest.mark.parametrize(
    ("frame_id", "hexdata", "value"), [(*v, x) for v, x in zip(VECTORS, VALUES, strict=True)]
)
def test_spec_vectors(frame_id: int, hexdata: str, value: Any) -> None:
    data = bytes.fromhex(hexdata)
    mine, theirs = fresh()
    if frame_id == sim.ASSIST_CATEGORY:
        assert mine.encode_category(value) == data
        assert mine.decode_category(data) == value
        assert theirs.encode_category(value) == data
        assert theirs.decode(frame_id, data) == agent.CategoryFrame(value)
        return
    assert mine.encode_state(value) == data
    assert mine.decode_state(frame_id, data) == value
    agent_value = STATE_OF[frame_id][1](**dataclasses.asdict(value))
    encode = {
        sim.VEHICLE_STATUS: theirs.encode_vehicle_status,
        sim.TYRE_PRESSURE: theirs.encode_tyres,
        sim.SAFETY_STATUS: theirs.encode_safety,
    }[frame_id]
    assert encode(agent_value) == data
    assert theirs.decode(frame_id, data) == agent_value


def test_e2e_spec_vectors() -> None:
    # CRC-8/SAE-J1850 check value, and three frames worked out bit by bit from SPEC §2
    assert sim.e2e_crc(b"123456789") == 0x4B == crc8_sae_j1850(b"123456789")
    pressed_0 = bytes.fromhex("b310000000000000")  # ConnectButton 1 in bits 4-5, counter 0
    fault_15 = bytes.fromhex("392f000000000000")  # ConnectButton 2, counter 15
    cancelled_3 = bytes.fromhex("8a53000000000000")  # LedMode 5 in bits 4-7, counter 3
    mine, theirs = fresh()
    assert mine.encode_button(sim.ButtonState.PRESSED, counter=0) == pressed_0
    assert mine.encode_button(sim.ButtonState.FAULT, counter=15) == fault_15
    assert mine.encode_led(sim.LedMode.CANCELLED, counter=3) == cancelled_3
    assert theirs.encode_button(agent.ButtonState.PRESSED) == pressed_0
    assert theirs.decode(sim.CONNECT_BUTTON, pressed_0) == agent.ButtonFrame(
        agent.ButtonState.PRESSED
    )
    assert theirs.decode(sim.CONNECT_BUTTON, fault_15) == agent.ButtonFrame(agent.ButtonState.FAULT)
    assert agent.decode_led(cancelled_3) is agent.LedMode.CANCELLED
    assert mine.decode_led(cancelled_3) is sim.LedMode.CANCELLED


# -- random raw frames: the simulators encode, the agent decodes ----------------------------------


def agent_view(theirs: agent.Matrix, frame_id: int, data: bytes) -> Any:
    """What the agent makes of a frame: a value, or the reason it rejects it."""
    if frame_id == sim.CONNECT_LED:  # the agent sends it; its observers read it so
        mode = agent.decode_led(data)
        return "rejected" if mode is None else int(mode)
    decoded = theirs.decode(frame_id, data)
    if isinstance(decoded, agent.Rejected):
        return decoded.reason
    if isinstance(decoded, agent.ButtonFrame):
        return int(decoded.state)
    if isinstance(decoded, agent.CategoryFrame):
        return decoded.category
    return decoded


def sim_view(mine: sim.SimMatrix, frame_id: int, data: bytes) -> Any:
    try:
        if frame_id == sim.CONNECT_LED:
            return int(mine.decode_led(data))
        if frame_id == sim.CONNECT_BUTTON:
            return int(mine.decode_button(data))
        if frame_id == sim.ASSIST_CATEGORY:
            return mine.decode_category(data)
        return mine.decode_state(frame_id, data)
    except sim.MatrixError as exc:
        return exc.reason


@pytest.mark.parametrize("frame_id", FRAME_IDS, ids=[f"0x{i:03X}" for i in FRAME_IDS])
@SETTINGS
@given(data=st.data())
def test_random_frames_read_alike(frame_id: int, data: st.DataObject) -> None:
    """A run of random frames: both sides accept the same ones and read the same values."""
    mine, theirs = fresh()
    reader = sim.SimMatrix()
    for raw in data.draw(st.lists(raw_frame(frame_id), min_size=1, max_size=20)):
        frame = mine.encode_signals(frame_id, raw, raw=True)
        expected, got = sim_view(reader, frame_id, frame), agent_view(theirs, frame_id, frame)
        if expected == "bad_value":  # a code SPEC §2 does not name
            assert got in ("bad_value", "rejected"), (raw, got)
        elif frame_id in STATE_OF:
            assert not isinstance(got, str), (raw, got)
            assert_same_state(frame_id, expected, got)
        else:
            assert got == expected, (raw, frame.hex())


# -- random values: the agent encodes, the simulators decode, and the bytes agree ----------------

VALUE_STRATEGIES: dict[int, st.SearchStrategy[Any]] = {
    sim.VEHICLE_STATUS: st.builds(
        sim.VehicleStatus,
        battery_12v_v=st.none() | st.integers(0, 0xFFFE).map(lambda r: r / 100),
        hv_soc_pct=st.none() | st.integers(0, 0xFE).map(lambda r: r / 2),
        range_km=st.none() | st.integers(0, 0xFFFE),
        ignition=st.sampled_from([None, "off", "acc", "on"]),
        trailer_connected=st.booleans(),
        hazard_lights=st.booleans(),
        doors_locked=st.booleans(),
        key_detected=st.booleans(),
        speed_kmh=st.none() | st.integers(0, 0xFE),
    ),
    sim.TYRE_PRESSURE: st.builds(
        sim.TyrePressure, *[st.none() | st.integers(0, 0xFE).map(lambda r: 2 * r)] * 4
    ),
    sim.SAFETY_STATUS: st.builds(
        sim.SafetyStatus,
        airbag_deployed=st.booleans(),
        crash_severity=st.none() | st.integers(0, 2),
        alarm_triggered=st.booleans(),
        tamper_detected=st.booleans(),
        hv_thermal_event=st.booleans(),
        immobilised=st.booleans(),
        odometer_km=st.integers(0, 0xFFFF_FFFF),
        active_dtc_count=st.integers(0, 0xFF),
    ),
}


@pytest.mark.parametrize("frame_id", sorted(STATE_OF), ids=lambda i: f"0x{i:03X}")
@SETTINGS
@given(data=st.data())
def test_state_frames_both_ways(frame_id: int, data: st.DataObject) -> None:
    value = data.draw(VALUE_STRATEGIES[frame_id])
    mine, theirs = fresh()
    agent_value = STATE_OF[frame_id][1](**dataclasses.asdict(value))
    encode = {
        sim.VEHICLE_STATUS: theirs.encode_vehicle_status,
        sim.TYRE_PRESSURE: theirs.encode_tyres,
        sim.SAFETY_STATUS: theirs.encode_safety,
    }[frame_id]
    by_agent, by_sim = encode(agent_value), mine.encode_state(value)
    assert by_agent == by_sim, (value, by_agent.hex(), by_sim.hex())
    assert_same_state(frame_id, value, mine.decode_state(frame_id, by_agent))
    assert_same_state(frame_id, value, theirs.decode(frame_id, by_sim))


@SETTINGS
@given(category=st.sampled_from([None, *sim.CATEGORIES]))
def test_category_both_ways(category: str | None) -> None:
    mine, theirs = fresh()
    assert theirs.encode_category(category) == mine.encode_category(category)
    assert mine.decode_category(theirs.encode_category(category)) == category
    assert theirs.decode(sim.ASSIST_CATEGORY, mine.encode_category(category)) == (
        agent.CategoryFrame(category)
    )


# -- E2E: CRC and alive counter, byte for byte ---------------------------------------------------


@SETTINGS
@given(body=st.binary(min_size=0, max_size=16))
def test_crc_is_crccheck_crc8_sae_j1850(body: bytes) -> None:
    assert crc8_sae_j1850(body) == sim.e2e_crc(body)


@SETTINGS
@given(
    button=st.lists(st.sampled_from(list(sim.ButtonState)), min_size=1, max_size=40),
    leds=st.lists(st.sampled_from(list(sim.LedMode)), min_size=1, max_size=40),
)
def test_protected_frames_are_byte_exact_through_the_counter_wrap(
    button: list[sim.ButtonState], leds: list[sim.LedMode]
) -> None:
    """Both sides count 0, 1, ..., 15, 0, ...; every frame is the same bytes, and each side
    accepts every frame of the other (no counter is taken as repeated)."""
    mine, theirs = fresh()
    reader_sim, reader_agent = sim.SimMatrix(), agent.Matrix(AGENT_DB)
    for state in button:
        by_sim = mine.encode_button(state)
        assert theirs.encode_button(agent.ButtonState(state.value)) == by_sim
        decoded = reader_agent.decode(sim.CONNECT_BUTTON, by_sim)
        assert decoded == agent.ButtonFrame(agent.ButtonState(state.value))
    for mode in leds:
        by_agent = theirs.encode_led(agent.LedMode(mode.value))
        assert mine.encode_led(mode) == by_agent
        assert reader_sim.decode_led(by_agent) is mode
        assert agent.decode_led(by_agent) is agent.LedMode(mode.value)


@SETTINGS
@given(
    frame_id=st.sampled_from(sorted(sim.E2E_FRAMES)),
    code=st.integers(0, 3),
    counter=st.integers(0, 15),
    bit=st.integers(0, 63),
)
def test_one_flipped_bit_is_a_bad_crc_on_both_sides(
    frame_id: int, code: int, counter: int, bit: int
) -> None:
    mine, theirs = fresh()
    name = "ConnectButton" if frame_id == sim.CONNECT_BUTTON else "LedMode"
    frame = bytearray(mine.encode_signals(frame_id, {name: code}, counter=counter))
    frame[bit // 8] ^= 1 << (bit % 8)
    if frame_id == sim.CONNECT_BUTTON:
        assert theirs.decode(frame_id, frame) == agent.Rejected(frame_id, "bad_crc")
        with pytest.raises(sim.MatrixError, match="bad_crc"):
            mine.decode_button(frame)
    else:
        assert agent.decode_led(frame) is None
        with pytest.raises(sim.MatrixError, match="bad_crc"):
            mine.decode_led(frame)


@SETTINGS
@given(counters=st.lists(st.integers(0, 15), min_size=2, max_size=30))
def test_repeated_counters_are_refused_alike(counters: list[int]) -> None:
    """The simulator sends chosen counters; the agent drops exactly the repeats, as sim does."""
    mine, theirs = fresh()
    reader = sim.SimMatrix()
    for counter in counters:
        frame = mine.encode_button(sim.ButtonState.PRESSED, counter=counter)
        got = agent_view(theirs, sim.CONNECT_BUTTON, frame)
        expected = sim_view(reader, sim.CONNECT_BUTTON, frame)
        assert got == expected, counters


# -- the simulators keep their own codec ----------------------------------------------------------

AGENT_CODEC = {"agent.core.frames", "agent.core.e2e", "agent.core.lines"}
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("folder", ["hw_sim", "tests/hil"])
def test_simulators_and_hil_never_import_the_agents_codec(folder: str) -> None:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n in AGENT_CODEC]
    assert found == []
