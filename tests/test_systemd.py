"""The systemd side: the unit verifies and is hardened, networkd files, sd_notify, watchdog.

``systemd-analyze``, ``systemd-sysusers`` and ``systemd-networkd`` are real peers here: the
unit is checked by the systemd that will run it (skipped without it, failed under CI). The
sd_notify tests listen on real ``AF_UNIX`` datagram sockets, as systemd does.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from peers import free_port, require, under_ci

from agent import config as config_module
from agent import sdnotify
from hw_sim.gpsd import FakeGpsd
from hw_sim.mosquitto import Mosquitto
from hw_sim.observed import ObservedAgent as Agent
from hw_sim.scenario import Scenario, config_text

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "connect-agent.service"
SYSUSERS = SYSTEMD / "connect-agent.sysusers"
NETWORK_FILES = sorted(SYSTEMD.glob("*.netdev")) + sorted(SYSTEMD.glob("*.network"))
MAX_EXPOSURE = 2.5  # systemd-analyze security: 1.9 with systemd 252 ("OK"); margin for
# newer systemd versions that rate more settings, none for a weaker unit
TIMEOUT = 10.0
READY_S = 5.0  # the broker is refused at once; CAN is virtual


# -- the unit file ------------------------------------------------------------------------------


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (systemd allows a key more than once)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def installable_copy(directory: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this checkout's ``connect-agent`` script.

    ``systemd-analyze verify`` insists that ExecStart's binary exists; everything else stays
    as shipped.
    """
    script = Path(sys.executable).with_name("connect-agent")
    binary = script if script.exists() else Path(sys.executable)
    text = UNIT.read_text() if text is None else text
    copy = directory / UNIT.name
    copy.write_text(text.replace("ExecStart=/usr/bin/connect-agent ", f"ExecStart={binary} ", 1))
    return copy


def verify(unit: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about ``unit`` (not about other units it loads)."""
    analyze = require("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).splitlines()
    problems = [line for line in output if unit.name in line or str(unit) in line]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {output}")
    return problems


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert verify(installable_copy(tmp_path)) == []


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt key or a missing binary is reported."""
    text = UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs=")
    assert any("WatchdogSecs" in line for line in verify(installable_copy(tmp_path, text)))
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / UNIT.name).write_text(UNIT.read_text().replace("/usr/bin/", "/nonexistent/"))
    assert verify(missing / UNIT.name)


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    analyze = require("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(installable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_the_unit_says_what_the_issue_asks() -> None:
    s = unit_settings()
    one = {key: values[-1] for key, values in s.items()}
    assert one["Service.Type"] == "notify"
    assert one["Service.NotifyAccess"] == "main"
    assert one["Service.WatchdogSec"] == "10s"
    assert one["Service.Restart"] == "always"
    assert one["Unit.StartLimitIntervalSec"] == "0"  # Restart=always never gives up
    assert one["Service.RestartPreventExitStatus"] == "2"  # a config error does not loop
    assert one["Service.ExecStart"].split() == [
        "/usr/bin/connect-agent",
        "run",
        "--config",
        "/etc/connect-agent/agent.toml",
    ]
    assert one["Service.User"] == "connect-agent"
    assert one["Service.DynamicUser"] == "no"
    assert one["Service.SupplementaryGroups"] == "dialout"
    assert one["Service.StateDirectory"] == "connect-agent"
    assert one["Service.StateDirectoryMode"] == "0700"
    assert one["Service.UMask"] == "0077"
    assert one["Service.CapabilityBoundingSet"] == ""
    assert set(one["Service.RestrictAddressFamilies"].split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_CAN",
    }
    for key in (
        "ProtectHome",
        "PrivateTmp",
        "NoNewPrivileges",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictRealtime",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert one[f"Service.{key}"] == "yes", key
    assert one["Service.ProtectSystem"] == "strict"
    assert one["Service.SystemCallArchitectures"] == "native"
    assert "/etc/connect-agent" in one["Service.ReadOnlyPaths"]
    # the stop deadline covers the agent's flush (5 s) and offline status (2 s)
    assert int(one["Service.TimeoutStopSec"].rstrip("s")) >= 10


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    sysusers = require("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    [user] = [
        line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
        if line.startswith("connect-agent:")
    ]
    assert int(user[2]) < 1000  # a system user
    assert user[5] == "/var/lib/connect-agent"
    assert user[6] == "/usr/sbin/nologin"
    assert "connect-agent:" in (tmp_path / "etc/group").read_text()


# -- systemd-networkd files -------------------------------------------------------------------


def networkd_binary() -> Path | None:
    for directory in ("/lib/systemd", "/usr/lib/systemd"):
        path = Path(directory) / "systemd-networkd"
        if path.exists():
            return path
    return None


def ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


@pytest.mark.parametrize("path", NETWORK_FILES, ids=lambda p: p.name)
def test_network_files_parse_and_use_only_keys_networkd_knows(path: Path) -> None:
    parsed = ini(path)
    keys = [f"{section}.{key}" for section in parsed.sections() for key in parsed[section]]
    assert keys
    require("systemd-analyze")  # the systemd package: under CI networkd must be there too
    binary = networkd_binary()
    if binary is None:
        message = "systemd-networkd is not installed (Debian 13+: apt-get install systemd-networkd)"
        if under_ci():
            pytest.fail(message)
        pytest.skip(message)
    known = binary.read_bytes()  # networkd's gperf tables hold every "Section.Key" it parses
    unknown = [key for key in keys if b"\0" + key.encode() + b"\0" not in known]
    assert unknown == [], f"{path.name}: keys systemd-networkd does not know: {unknown}"


def test_vcan0_for_a_laptop() -> None:
    netdev = ini(SYSTEMD / "80-vcan0.netdev")
    assert dict(netdev["NetDev"]) | {"Description": ""} == {
        "Name": "vcan0",
        "Kind": "vcan",
        "Description": "",
    }
    network = ini(SYSTEMD / "80-vcan0.network")
    assert network["Match"]["Name"] == "vcan0"
    assert network["Link"]["RequiredForOnline"] == "no"


def test_can0_on_the_board_at_500_kbit() -> None:
    network = ini(SYSTEMD / "80-can0.network")
    assert network["Match"]["Name"] == "can0"
    assert network["CAN"]["BitRate"] == "500K"
    assert network["CAN"]["RestartSec"] == "100ms"  # restart-ms: bus-off recovery (deploy.md)
    assert network["Link"]["RequiredForOnline"] == "no"
    # the agent's default matches what networkd sets up
    assert config_module.FIELDS["can.bitrate"][1] == 500_000
    assert config_module.FIELDS["can.channel"][1] == "can0"


# -- sd_notify on a real AF_UNIX datagram socket ----------------------------------------------


@contextmanager
def notify_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, abstract: bool = False
) -> Iterator[socket.socket]:
    """A socket like systemd's, named in ``$NOTIFY_SOCKET``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"connect-agent-test-{os.getpid()}-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = tmp_path / "notify"
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    sock.settimeout(TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_sends_datagrams(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, abstract: bool
) -> None:
    with notify_socket(monkeypatch, tmp_path, abstract=abstract) as sock:
        assert sdnotify.ready("CAN ok, MQTT connected")
        assert sock.recv(4096) == b"READY=1\nSTATUS=CAN ok, MQTT connected"
        assert sdnotify.status("degraded:\nbroker  unreachable")
        assert sock.recv(4096) == b"STATUS=degraded: broker unreachable"  # one line
        assert sdnotify.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert sdnotify.stopping()
        assert sock.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_a_socket_nobody_listens_on_is_not_an_error(tmp_path: Path) -> None:
    environ = {"NOTIFY_SOCKET": str(tmp_path / "gone")}
    assert sdnotify.notify("READY=1", environ=environ) is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "10000000"}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # someone else's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(environ) == expected


@pytest.mark.asyncio
async def test_watchdog_loop_pings_at_half_the_interval(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with notify_socket(monkeypatch, tmp_path) as sock:
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(sdnotify.watchdog_loop())
        try:
            async with asyncio.timeout(TIMEOUT):
                first = await loop.sock_recv(sock, 4096)
                start = loop.time()
                for _ in range(3):
                    assert await loop.sock_recv(sock, 4096) == b"WATCHDOG=1"
                elapsed = loop.time() - start
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert first == b"WATCHDOG=1"
    assert elapsed >= 0.3 - 0.05  # three periods of 0.1 s, not a flood


@pytest.mark.asyncio
async def test_watchdog_loop_is_a_no_op_without_a_watchdog(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    with notify_socket(monkeypatch, tmp_path):
        async with asyncio.timeout(TIMEOUT):
            await sdnotify.watchdog_loop()  # returns at once
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("NOTIFY_SOCKET")
    async with asyncio.timeout(TIMEOUT):
        await sdnotify.watchdog_loop()


# -- the agent under a notify socket (wiring in agent/app.py) ---------------------------------


@asynccontextmanager
async def listening(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[asyncio.Queue[bytes]]:
    """A notify socket whose datagrams arrive in a queue; with a 1 s watchdog."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_reader(sock.fileno(), lambda: queue.put_nowait(sock.recv(4096)))
    try:
        yield queue
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


async def next_with(queue: asyncio.Queue[bytes], prefix: bytes, timeout: float = TIMEOUT) -> bytes:
    async with asyncio.timeout(timeout):
        while True:
            message = await queue.get()
            if message.startswith(prefix):
                return message


@pytest.mark.asyncio
async def test_agent_notifies_ready_watchdog_and_stopping(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    async with (
        listening(monkeypatch, tmp_path) as queue,
        Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim,
    ):
        ready = await next_with(queue, b"READY=1", READY_S)  # sent before the status was
        assert sim.agent.uplink.connected and sim.agent.can.state == "ok"
        await next_with(queue, b"WATCHDOG=1")
        await next_with(queue, b"WATCHDOG=1")
        await sim.stop_agent()
        await next_with(queue, b"STOPPING=1")
    assert b"\n" not in ready or ready.split(b"\n")[1].startswith(b"STATUS=")


@pytest.mark.asyncio
async def test_agent_is_ready_degraded_when_the_broker_is_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No broker: READY=1 after the first failed attempt, not a start timeout and restart."""
    nobody = free_port()
    path = tmp_path / "agent.toml"
    path.write_text(
        config_text(tmp_path / "state", nobody, free_port(), channel=f"sd-{uuid.uuid4().hex}")
    )
    agent = Agent(config_module.load(path, environ={}))
    stop = asyncio.Event()
    async with listening(monkeypatch, tmp_path) as queue:
        task = asyncio.create_task(agent.run(stop))
        try:
            await next_with(queue, b"READY=1", READY_S)
            assert not agent.uplink.connected
            assert agent.outbox.is_open
        finally:
            stop.set()
            async with asyncio.timeout(TIMEOUT):
                await task
