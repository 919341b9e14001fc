"""SPEC §6: personal data and positions never in logs or status, gone from disk once delivered.

A whole call runs against the real Mosquitto and the fake gpsd standing at a distinctive
position, with every logger at DEBUG; the captured output (messages, arguments, tracebacks)
is then searched for the driver's name, phone, e-mail and street and for that position in
the formats a position can take (decimal degrees with a point or a comma, scaled integers,
degrees and minutes, NMEA).
"""

from __future__ import annotations

import json
import logging
import re
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytest_asyncio

from agent import cli
from agent.core.frames import LedMode
from agent.outbox import FILENAME
from agent.privacy import config_file_warnings
from hw_sim.gpsd import FakeGpsd
from hw_sim.mosquitto import Mosquitto
from hw_sim.scenario import CONTACT, VIN, Scenario, config_text

TIMEOUT = 15.0
# Where the fake gpsd stands: digits that occur nowhere else by chance.
LAT, LON = 46.951234, 7.438765


def _position_patterns(lat: float, lon: float) -> list[str]:
    patterns = []
    for value, width in ((lat, 2), (lon, 3)):
        degrees = int(value)
        fraction = f"{value:.6f}".split(".")[1]
        minutes = (value - degrees) * 60
        patterns += [
            rf"(?<!\d){degrees}[.,]{fraction[:3]}",  # 46.951, 46,951 (3+ decimals)
            rf"(?<!\d){degrees}{fraction[:4]}\d",  # 4695123 scaled integers (1e5 and up)
            rf"(?<!\d){degrees}\s*°\s*{int(minutes)}(?!\d)",  # 46° 57'
            rf"(?<!\d)0*{degrees:0{width}d}{int(minutes):02d}[.,]\d{{2}}",  # NMEA 4657.07
        ]
    return patterns


POSITION = [re.compile(p) for p in _position_patterns(LAT, LON)]
_DIGITS = re.sub(r"\D", "", CONTACT["phone"])  # 41791234567
PERSONAL = [
    re.compile(re.escape(CONTACT["name"]), re.IGNORECASE),
    re.compile("muster", re.IGNORECASE),  # the surname, also inside the e-mail address
    re.compile(re.escape(CONTACT["email"]), re.IGNORECASE),
    re.compile(re.escape(CONTACT["street"].split()[0]), re.IGNORECASE),  # without number
    re.compile(re.escape(CONTACT["phone"])),
    re.compile(_DIGITS[2:]),  # 791234567: the number without country code or spaces
]


def leaks(text: str) -> list[str]:
    """Every personal datum or position-like string in ``text``."""
    return [m.group(0) for p in PERSONAL + POSITION for m in p.finditer(text)]


def test_the_scanner_finds_what_it_looks_for() -> None:
    assert leaks("fix at 46.951234, 7.438765") == ["46.951", "7.438"]
    assert leaks("lat=46,9512 lon=7,4387") == ["46,951", "7,438"]
    assert leaks("469512340 74387650") == ["4695123", "743876"]
    assert leaks("46° 57' 4\" N, 7°26'") == ["46° 57", "7°26"]
    assert leaks("$GPGGA,141600.00,4657.07404,N,00726.32590,E") == ["4657.07", "00726.32"]
    assert len(leaks("Anna Muster, +41 79 123 45 67, 0791234567")) == 4
    assert leaks("anna.muster@example.ch") == ["muster", "anna.muster@example.ch"]
    assert leaks("Bahnhofstrasse 1") == ["Bahnhofstrasse"]
    assert leaks(f"incident 3f2a46951 at 17.4 s, port 46951, VIN {VIN}, 2026-11-24") == []


class Everything(logging.Handler):
    """Every record of every logger, formatted with its arguments and traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def all_logs_at_debug() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    loggers = [root] + [
        logger for logger in root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    levels = {logger: logger.level for logger in loggers}
    for logger in loggers:
        if logger.level != logging.NOTSET:
            logger.setLevel(logging.DEBUG)
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level in levels.items():
            logger.setLevel(level)


def outbox_bytes(state: Path) -> dict[str, bytes]:
    """The outbox's files as they are on disk now (database, WAL, shared memory)."""
    files = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = state / (FILENAME + suffix)
        if path.exists():
            files[path.name] = path.read_bytes()
    return files


def on_disk(state: Path) -> list[str]:
    found = []
    for name, data in outbox_bytes(state).items():
        text = data.decode("utf-8", errors="replace")
        found += [f"{name}: {leak}" for leak in leaks(text)]
    return found


@pytest_asyncio.fixture
async def standing_gpsd() -> AsyncIterator[FakeGpsd]:
    async with FakeGpsd(interval=0.05) as gpsd:
        gpsd.set_position(LAT, LON)
        yield gpsd


@pytest.mark.asyncio
async def test_a_whole_call_logs_no_personal_data_and_no_position(
    tmp_path: Path, mosquitto: Mosquitto, standing_gpsd: FakeGpsd
) -> None:
    with all_logs_at_debug() as logs:
        async with Scenario(tmp_path, mosquitto.port, standing_gpsd.port) as sim:
            assert await sim.agent.wait_gps_fix(TIMEOUT)
            await sim.car.hold(2100)
            [request] = await sim.backend.wait_for("request", 1, timeout=TIMEOUT)
            await sim.led.wait_for(LedMode.CONNECTED, timeout=TIMEOUT)  # the ack arrived
            await sim.car.hold(2100)  # within the cancel window
            await sim.backend.wait_for("cancel", 1, timeout=TIMEOUT)
            await sim.led.wait_for(LedMode.READY, timeout=TIMEOUT)
            await sim.stop_agent()
            await sim.backend.wait_status(VIN, "state", "offline", timeout=TIMEOUT)
    # The data did flow where it belongs: the scan would have seen it in the logs.
    assert request.payload["contact"]["name"] == CONTACT["name"]
    assert request.payload["location"]["lat"] == pytest.approx(LAT)
    assert leaks(json.dumps(request.payload, ensure_ascii=False))
    assert any(line.startswith("agent.") for line in logs.lines)
    assert any("DEBUG" in line for line in logs.lines)
    leaked = [(line, leaks(line)) for line in logs.lines if leaks(line)]
    assert leaked == []
    # SPEC §5/§6: the status topic never carries a position (or anyone's personal data)
    statuses = [r for r in sim.backend.received if r.kind == "status"]
    assert len(statuses) >= 2
    for status in statuses:
        text = json.dumps(status.payload, ensure_ascii=False)
        assert leaks(text) == [], text
        assert not {"lat", "lon", "location", "position", "recent"} & set(status.payload)


async def deliver_one_call(sim: Scenario) -> None:
    """One request, PUBACKed by the broker; the backend does not answer (still open)."""
    assert await sim.agent.wait_gps_fix(TIMEOUT)
    sim.backend.auto_ack = None
    await sim.car.hold(2100)
    [request] = await sim.backend.wait_for("request", 1, timeout=TIMEOUT)
    incident = request.payload["incident_id"]
    await sim.agent.wait_until(lambda: ("request", incident, 1) in sim.agent.deliveries, TIMEOUT)
    assert sim.agent.outbox.count() == 0


@pytest.mark.asyncio
async def test_the_outbox_is_private(
    tmp_path: Path, mosquitto: Mosquitto, standing_gpsd: FakeGpsd
) -> None:
    state = tmp_path / "state"
    async with Scenario(tmp_path, mosquitto.port, standing_gpsd.port) as sim:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        await deliver_one_call(sim)
        files = outbox_bytes(state)
        assert FILENAME in files
        for name in files:
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        await sim.stop_agent()
    # stopped: the WAL is checkpointed into the database, whose deleted rows were zeroed
    assert on_disk(state) == []


@pytest.mark.asyncio
async def test_delivered_personal_data_is_gone_from_disk_at_once(
    tmp_path: Path, mosquitto: Mosquitto, standing_gpsd: FakeGpsd
) -> None:
    """A power cut right after the PUBACK must not leave the request on disk."""
    state = tmp_path / "state"
    async with Scenario(tmp_path, mosquitto.port, standing_gpsd.port) as sim:
        await deliver_one_call(sim)
        assert on_disk(state) == []


def test_check_config_masks_personal_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", 1883, 2947))
    assert cli.main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["contact"]["name"] == "A***"
    assert leaks(out + err) == []


def test_config_errors_do_not_echo_personal_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    text = config_text(tmp_path / "state", 1883, 2947)
    path.write_text(text.replace(CONTACT["email"], "anna.muster(at)example.ch"))
    assert cli.main(["check-config", "--config", str(path)]) == cli.EXIT_CONFIG
    out, err = capsys.readouterr()
    assert "contact.email" in err
    assert leaks(out + err) == []


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o600, []),
        (0o640, []),  # root:connect-agent, as installed
        (0o644, ["readable by every user (mode 0644)"]),
        (0o660, ["writable by its group (mode 0660)"]),
        (0o666, ["readable by every user (mode 0666)", "writable by every user (mode 0666)"]),
    ],
)
def test_config_file_permissions(tmp_path: Path, mode: int, expected: list[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", 1883, 2947))
    path.chmod(mode)
    warnings = config_file_warnings(path)
    assert len(warnings) == len(expected)
    for warning, fragment in zip(warnings, expected, strict=True):
        assert fragment in warning
        assert str(path) in warning
        assert leaks(warning) == []
    assert config_file_warnings(tmp_path / "missing.toml") == []
