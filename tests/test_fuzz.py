"""Bad input from the outside world is counted and survived, never raised (STYLE: errors).

Hypothesis feeds every decoder the agent exposes to the world arbitrary input: CAN frames,
backend acks, gpsd's JSON (through the whole :class:`GpsdSource` on a real TCP stream),
serial lines, the TLS certificate reader, systemd's environment. For the agent-level paths
each rejected input must show up, exactly once, in the counters of the status.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent import config as config_module
from agent import sdnotify
from agent.core.controller import COUNTER_NAMES as CONTROLLER_COUNTERS
from agent.core.e2e import crc8_sae_j1850
from agent.core.frames import (
    CONNECT_BUTTON,
    DLC,
    RECEIVED_IDS,
    ButtonFrame,
    CategoryFrame,
    LedMode,
    Matrix,
    Rejected,
    SafetyStatus,
    TyrePressure,
    VehicleStatus,
    load_dbc,
)
from agent.core.gpsd_reports import BadReport, decode_report, fix_from_tpv
from agent.core.incident import Ack, parse_ack
from agent.errors import ConfigError
from agent.inputs.gpsd import GpsdSource
from agent.inputs.uds import RESPONSE_ID as UDS_RESPONSE_ID
from agent.tls import certificate_validity
from hw_sim.car import dbc_path
from hw_sim.gpsd import FakeGpsd
from hw_sim.mosquitto import Mosquitto
from hw_sim.observed import ObservedAgent as Agent
from hw_sim.scenario import VIN, Scenario, config_text

PURE = settings(max_examples=500, deadline=None)
RECOVERY_COUNTERS = ("bus_off_recoveries", "can_recoveries", "e2e_resets")
AGENT = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
STREAM = settings(max_examples=100, deadline=None)

# -- strategies -------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _e2e(body: bytes) -> bytes:
    return bytes([crc8_sae_j1850(body)]) + body


can_ids = st.sampled_from([*RECEIVED_IDS, 0x3A2, 0x7E8]) | st.integers(0, 0x1FFFFFFF)
can_data = st.binary(max_size=64)
# Frames that get past DLC and CRC checks, to reach the signal decoding.
well_framed = st.sampled_from(RECEIVED_IDS).flatmap(
    lambda fid: st.tuples(
        st.just(fid),
        st.binary(min_size=7, max_size=7).map(_e2e)
        if fid == CONNECT_BUTTON
        else st.binary(min_size=DLC[fid], max_size=DLC[fid]),
    )
)
FRAME_TYPES = (ButtonFrame, CategoryFrame, VehicleStatus, TyrePressure, SafetyStatus, Rejected)


@pytest.fixture(scope="module")
def dbc() -> Any:
    return load_dbc(dbc_path())


# -- CAN --------------------------------------------------------------------------------------


@PURE
@given(frames=st.lists(st.one_of(st.tuples(can_ids, can_data), well_framed), max_size=30))
def test_the_can_decoder_returns_a_frame_or_a_rejection(
    dbc: Any, frames: list[tuple[int, bytes]]
) -> None:
    matrix = Matrix(dbc)  # with its E2E state, across a sequence of frames
    for frame_id, data in frames:
        result = matrix.decode(frame_id, data)
        assert isinstance(result, FRAME_TYPES)
        if isinstance(result, Rejected):
            assert result.frame_id == frame_id
            assert result.reason in (
                "bad_dlc",
                "bad_crc",
                "repeated_counter",
                "bad_value",
                "unknown_id",
            )
        else:
            assert frame_id in RECEIVED_IDS and len(data) == DLC[frame_id]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """An agent that is not running: its handlers are driven directly, on this thread."""
    directory = tmp_path_factory.mktemp("fuzz-agent")
    path = directory / "agent.toml"
    path.write_text(config_text(directory / "state", 1, 1, channel=f"fuzz-{uuid.uuid4().hex}"))
    # No call can start while fuzzing: a hold needs 30 s of wall time.
    config = config_module.load(path, environ={}, overrides={"button.hold_ms": "30000"})
    agent = Agent(config)
    agent.outbox.open()
    try:
        yield agent
    finally:
        agent.outbox.close()


def counted(agent: Agent, prefix: str = "") -> dict[str, int]:
    counters: dict[str, int] = agent._status("online")["counters"]
    return {k: v for k, v in counters.items() if k.startswith(prefix)}


def bump(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@AGENT
@given(
    frame=st.one_of(st.tuples(can_ids, can_data), well_framed),
    flags=st.fixed_dictionaries(
        {
            "is_extended_id": st.booleans(),
            "is_remote_frame": st.booleans(),
            "is_error_frame": st.booleans(),
            "is_fd": st.booleans(),
        }
    ),
)
def test_every_rejected_can_frame_is_counted_in_the_status(
    agent: Agent, frame: tuple[int, bytes], flags: dict[str, bool]
) -> None:
    frame_id, data = frame
    message = can.Message(arbitration_id=frame_id, data=data, check=False, **flags)
    decoded: list[object] = []
    decode = agent.matrix.decode

    def spy(fid: int, payload: bytes | bytearray) -> object:
        decoded.append(result := decode(fid, payload))
        return result

    agent.matrix.decode = spy  # type: ignore[assignment,method-assign]
    agent.car._cyclic.clear()  # an unchanged cyclic frame skips decoding: make every one new
    before = counted(agent)
    try:
        agent.can._receive(message)  # the CAN adapter's entry: flags first, then the matrix
    finally:
        del agent.matrix.decode
    change = bump(before, counted(agent))
    change.pop("send_no_bus", None)  # an accepted button frame refreshes the (absent) LED
    # An earlier example may have left the controller bus-off; any frame then is a recovery.
    recovery = {k: change.pop(k) for k in RECOVERY_COUNTERS if k in change}
    foreign = (flags["is_extended_id"] or flags["is_remote_frame"] or flags["is_fd"]) and not flags[
        "is_error_frame"
    ]
    if flags["is_error_frame"]:
        # counted, and by class: the controller's state comes from them (agent.core.controller)
        assert change.pop("error_frames") == 1
        assert set(change) <= set(CONTROLLER_COUNTERS), change
        assert recovery == {} or "can_err_restarted" in change
        return
    if recovery:
        assert recovery == dict.fromkeys(RECOVERY_COUNTERS, 1), recovery
    if foreign:
        assert change == {"foreign_frames": 1}
    elif frame_id == UDS_RESPONSE_ID:  # the diagnostic answers go to the UDS client
        assert decoded == []
        assert not any(k.startswith("can_") for k in change), change
    else:
        [result] = decoded
        if isinstance(result, Rejected):
            assert change == {f"can_{result.reason}": 1}
        else:
            assert not any(k.startswith("can_") for k in change), change


def test_an_unsolicited_uds_answer_is_counted_in_the_status(agent: Agent) -> None:
    before = agent.uds.counters["unsolicited"]
    message = can.Message(
        arbitration_id=UDS_RESPONSE_ID, data=b"\x03\x7f\x22\x31", is_extended_id=False
    )
    agent.can._receive(message)
    assert agent.uds.counters["unsolicited"] == before + 1  # counted by the UDS client
    assert any("unsolicited" in name for name in counted(agent))  # and visible


# -- backend acks -----------------------------------------------------------------------------

ack_like = st.fixed_dictionaries(
    {},
    optional={
        "incident_id": st.uuids().map(str) | json_values,
        "status": st.sampled_from(["received", "assigned", "closed", "rejected"]) | json_values,
        "message": st.text(max_size=30) | json_values,
        "eta_minutes": st.integers(-5, 500) | json_values,
    },
)
ack_payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    ack_like.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 50).map(lambda n: b"[" * n + b"]" * n),
    st.integers(2100, 5000).map(lambda n: b"[" * n + b"]" * n),  # over the size limit
)


@PURE
@given(ack_payloads)
def test_parse_ack_returns_an_ack_or_a_reason(payload: bytes) -> None:
    result = parse_ack(payload)
    assert isinstance(result, Ack | str)


@pytest.mark.parametrize(
    "depth",
    [
        100,
        1000,
        2000,
    ],
)
def test_parse_ack_survives_deeply_nested_json(depth: int) -> None:
    """A backend (or anyone allowed to publish on the ack topic) sends ``[[[[...]]]]``."""
    payload = b"[" * depth + b"]" * depth
    assert len(payload) <= 4096  # under the size limit: it reaches json.loads
    assert isinstance(parse_ack(payload), str)


@AGENT
@given(ack_payloads)
def test_every_rejected_ack_is_counted_in_the_status(agent: Agent, payload: bytes) -> None:
    assume(agent.incidents.incident is None)
    before = counted(agent, "ack_")
    agent.on_ack(payload)
    change = bump(before, counted(agent, "ack_"))
    assert sum(change.values()) == 1, change  # no incident is open: nothing is accepted
    [name] = change
    expected = parse_ack(payload)
    assert name == ("ack_unknown_incident" if isinstance(expected, Ack) else f"ack_{expected}")


# -- gpsd -------------------------------------------------------------------------------------

tpv_like = st.fixed_dictionaries(
    {"class": st.sampled_from(["TPV", "SKY", "VERSION", "ERROR", "DEVICES"]) | json_values},
    optional={
        key: json_values | st.floats() | st.integers()
        for key in (
            *("mode", "lat", "lon", "time", "altHAE", "alt", "track", "speed"),
            *("eph", "epx", "epy", "message", "release"),
        )
    },
)
gpsd_lines = st.one_of(
    st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")),
    tpv_like.map(lambda d: json.dumps(d).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n),
)


@PURE
@given(st.one_of(gpsd_lines, st.binary(max_size=200)))
def test_decode_report_returns_a_report_or_bad_report(line: bytes) -> None:
    try:
        report = decode_report(line)
    except BadReport as exc:
        assert exc.kind in ("bad_json", "bad_report")
        return
    assert isinstance(report["class"], str)


@PURE
@given(tpv_like, st.floats(0, 1e6))
def test_fix_from_tpv_returns_a_fix_nothing_or_bad_report(
    report: dict[str, object], received: float
) -> None:
    try:
        fix, defect = fix_from_tpv(report, received)
    except BadReport as exc:
        assert exc.kind in ("bad_tpv", "incomplete_tpv")
        return
    assert defect in (None, "bad_time")
    if fix is not None:
        assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180


class Sink:
    def __init__(self) -> None:
        self.fixes = 0
        self.no_fix = 0
        self.disconnected = 0

    def on_fix(self, fix: object) -> None:
        self.fixes += 1

    def on_no_fix(self, now: float) -> None:
        self.no_fix += 1

    def on_disconnected(self, now: float) -> None:
        self.disconnected += 1


MAX_LINE = 256
UNUSABLE = ("bad_json", "bad_report", "line_too_long")  # bad_tpv etc. are reports too


async def serve_once(data: bytes, sink: Sink) -> GpsdSource:
    """A gpsd that sends ``data`` and hangs up; one whole session of the real adapter."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()  # ?WATCH: read, so that closing sends FIN, not RST
        writer.write(data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = GpsdSource("127.0.0.1", port, sink, max_line=MAX_LINE, silence_s=60)
    try:
        async with asyncio.timeout(10):
            await source._session()
    finally:
        server.close()
        await server.wait_closed()
    return source


@STREAM
@given(
    st.lists(
        st.one_of(gpsd_lines, st.binary(min_size=MAX_LINE, max_size=600).filter(bytes.strip)),
        max_size=12,
    )
)
def test_the_gpsd_source_counts_every_line_it_cannot_use(lines: list[bytes]) -> None:
    lines = [line.replace(b"\n", b"") for line in lines]
    sink = Sink()
    source = asyncio.run(serve_once(b"".join(line + b"\n" for line in lines), sink))
    counters = source.counters
    # every line that is not blank is a report or counted as bad, exactly once
    expected = sum(1 for line in lines if line.strip())
    assert counters["reports"] + sum(counters[k] for k in UNUSABLE) == expected, counters
    assert counters["fixes"] == sink.fixes
    assert counters["no_fix"] == sink.no_fix


# -- serial lines (agent/core/lines.py) ---------------------------------------------------------


@PURE
@given(
    stream=st.lists(
        st.one_of(
            st.binary(max_size=100),
            st.sampled_from([b"$CNBTN,P,1*", b"\r\n", b"$", b"*", b"\n"]),
        ),
        max_size=20,
    ),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_serial_lines_are_decoded_or_rejected_whatever_the_chunking(
    stream: list[bytes], cuts: list[int]
) -> None:
    lines = pytest.importorskip("agent.core.lines")
    data = b"".join(stream)

    def decode(chunks: list[bytes]) -> list[object]:
        splitter, decoder = lines.LineSplitter(), lines.ModuleLineDecoder()
        return [decoder.decode(line) for chunk in chunks for line in splitter.feed(chunk)]

    whole = decode([data])
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunked = decode([data[a:b] for a, b in itertools.pairwise(edges)])
    assert chunked == whole  # how the UART happens to cut the bytes does not matter
    for result in whole:
        if isinstance(result, lines.LineRejected):
            assert result.reason in lines.REJECT_REASONS
        else:
            assert isinstance(result, lines.ButtonLine | lines.CategoryLine)


# -- certificates and systemd's environment ---------------------------------------------------


@PURE
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(
            lambda der: (
                b"-----BEGIN CERTIFICATE-----\n"
                + base64.encodebytes(der)
                + b"-----END CERTIFICATE-----\n"
            )
        ),
        st.binary(max_size=40).map(
            lambda tail: (
                b"-----BEGIN CERTIFICATE-----\n"
                + base64.encodebytes(b"\x30\x82\x01\x00\x30\x82\x00\xf0" + tail)
                + b"-----END CERTIFICATE-----\n"
            )
        ),
    )
)
def test_the_certificate_reader_returns_dates_or_value_error(pem: bytes) -> None:
    try:
        not_before, not_after = certificate_validity(pem)
    except ValueError:
        return
    assert not_before.tzinfo is not None and not_after.tzinfo is not None


@PURE
@given(st.dictionaries(st.sampled_from(["WATCHDOG_USEC", "WATCHDOG_PID"]), st.text(max_size=12)))
def test_watchdog_interval_never_raises(environ: dict[str, str]) -> None:
    interval = sdnotify.watchdog_interval(environ)
    assert interval is None or interval > 0


GARBAGE = ["", " ", "-1", "1e400", "nan", "true", "\x00", "ä" * 300, "[1]", "0x10"]
# Found by the test below; agent/config.py to fix (reported to the lead).
CONFIG_CRASHES = [("can.dbc", "ä" * 300), ("coverage.profile", "\x00")]


def load_with(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", 1883, 2947))
    try:
        config_module.load(path, environ={}, overrides={key: value})
    except ConfigError as exc:
        assert str(path) in str(exc) and "key" in str(exc), (key, value, exc)


def test_a_config_value_from_the_command_line_is_accepted_or_named(tmp_path: Path) -> None:
    """Every key, given garbage as text (env or --set): a ConfigError naming it, or a Config."""
    for key in config_module.FIELDS:
        for value in GARBAGE:
            if (key, value) not in CONFIG_CRASHES:
                load_with(tmp_path, key, value)


@pytest.mark.parametrize(("key", "value"), CONFIG_CRASHES, ids=["dbc-name-too-long", "nul-byte"])
def test_an_impossible_path_is_a_config_error(tmp_path: Path, key: str, value: str) -> None:
    load_with(tmp_path, key, value)


# -- acks through the real broker -------------------------------------------------------------


def publish(port: int, topic: str, payloads: list[bytes]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


GARBAGE_ACKS = [b"", b"not json", b"\xff\xfe", b"[]", b'{"incident_id": 5}', b"x" * 5000]


@pytest.mark.asyncio
async def test_garbage_on_the_ack_topic_is_counted_and_survived(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
        topic = f"assistance/v1/{VIN}/ack"
        await asyncio.to_thread(publish, mosquitto.port, topic, GARBAGE_ACKS)
        await sim.agent.wait_until(
            lambda: sum(counted(sim.agent, "ack_").values()) == len(GARBAGE_ACKS), 10
        )
        # still serving: a call goes through
        await sim.car.hold(2100)
        await sim.backend.wait_for("request", 1, timeout=10)
        await sim.led.wait_for(LedMode.CONNECTED, timeout=10)
    assert counted(sim.agent, "ack_") == {
        "ack_bad_json": 3,
        "ack_not_an_object": 1,
        "ack_bad_fields": 1,
        "ack_too_large": 1,
    }


@pytest.mark.asyncio
async def test_a_deeply_nested_ack_is_counted(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
        nested = b"[" * 2000 + b"]" * 2000
        await asyncio.to_thread(publish, mosquitto.port, f"assistance/v1/{VIN}/ack", [nested])
        await sim.agent.wait_until(lambda: "ack_bad_json" in counted(sim.agent), 5)
