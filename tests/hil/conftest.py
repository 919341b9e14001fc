"""The HIL suite's gate and fixtures: real SocketCAN (vcan0 under UML, or a rig's can0).

Collected only when ``HIL_SUITE=1`` (``make hil`` sets it and runs pytest through
``hil/run-in-uml.sh``); a plain ``pytest`` never collects ``tests/hil``: not skipped, not
failed, simply absent. Once enabled, the suite requires its channel: a missing or down
interface, or a missing peer program, fails every test instead of skipping it.

Settings (environment, passed into UML as ``HIL_*``):

``HIL_CAN_INTERFACE`` (socketcan), ``HIL_CAN_CHANNEL`` (vcan0)
    the python-can bus the agent, the car and the tests use.
``HIL_ROOF_MODULE`` (sim)
    ``sim``: the simulated car's button module presses CONNECT; ``real``: a roof module on
    the bus does (the car's button is silenced), tests that inject CONNECT_BUTTON frames are
    skipped, and presses come from ``HIL_PRESS_CMD MS`` (a relay) or those tests are skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from gpsfake import gpsfake_gpsd
from hilstack import Settings, Stack

from hw_sim.backend import SimulatedBackend
from hw_sim.gpsd import load_route, route_to_nmea
from hw_sim.mosquitto import Mosquitto

ENABLED = os.environ.get("HIL_SUITE", "").lower() not in ("", "0", "false", "no")
HERE = Path(__file__).resolve().parent

if not ENABLED:
    # Not collected at all outside `make hil`: the normal run must not see these tests.
    collect_ignore_glob = ["*"]

MARKERS = {
    "hil_press": "pressed through CONNECT: the simulated button, or HIL_PRESS_CMD with a "
    "real roof module (skipped without one of them)",
    "hil_sim_roof": "sends CONNECT_BUTTON frames itself: needs HIL_ROOF_MODULE=sim",
    "hil_socketcan": "uses can-utils, ip link or /proc/net/can: needs HIL_CAN_INTERFACE=socketcan",
    "hil_link_control": "takes the CAN interface down and up: needs root (CAP_NET_ADMIN)",
    "hil_ecu": "the stack includes the simulated gateway ECU (hw-sim ecu), started before "
    "the agent",
}
IFF_UP = 0x1


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A file named explicitly is collected even when ignored: say how to run it."""
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="the HIL suite runs with `make hil` (HIL_SUITE=1)")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


def _required_programs(settings: Settings) -> list[str]:
    programs = ["mosquitto", "gpsd", "gpsfake"]
    if settings.socketcan:
        programs += ["cansend", "candump", "ip"]
    return programs


@pytest.fixture(scope="session")
def hil_settings() -> Settings:
    """The rig, checked once: the channel exists and is up, the peer programs are here."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        pytest.fail(str(exc))
    missing = [
        p
        for p in _required_programs(settings)
        if not (shutil.which(p) or shutil.which(f"/usr/sbin/{p}") or shutil.which(f"/sbin/{p}"))
    ]
    if missing:
        pytest.fail(f"HIL suite: {', '.join(missing)} not installed (.ci/run installs them)")
    if settings.socketcan:
        flags = Path(f"/sys/class/net/{settings.channel}/flags")
        if not flags.exists():
            pytest.fail(
                f"HIL suite: no CAN interface {settings.channel!r} on this kernel; run it "
                "with `make hil` (hil/run-in-uml.sh boots a kernel with vcan0)"
            )
        if not int(flags.read_text(), 16) & IFF_UP:
            pytest.fail(f"HIL suite: {settings.channel} is down (ip link set up it)")
    return settings


@pytest.fixture(autouse=True)
def _rig_can_run(request: pytest.FixtureRequest, hil_settings: Settings) -> None:
    """Skip what this rig cannot do (only on purpose: the defaults run everything)."""
    s = hil_settings
    if request.node.get_closest_marker("hil_socketcan") and not s.socketcan:
        pytest.skip(f"needs SocketCAN, the rig uses {s.interface}")
    if request.node.get_closest_marker("hil_sim_roof") and s.roof != "sim":
        pytest.skip("sends CONNECT_BUTTON itself: needs HIL_ROOF_MODULE=sim")
    if request.node.get_closest_marker("hil_press") and s.roof == "real" and not s.press_cmd:
        pytest.skip("a real roof module and no HIL_PRESS_CMD: nobody presses CONNECT")
    if request.node.get_closest_marker("hil_link_control") and os.geteuid() != 0:
        pytest.skip("takes the interface down and up: needs root")


@pytest_asyncio.fixture
async def stack(
    hil_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    """Mosquitto, gpsd (gpsfake), the backend; then ``hw-sim car`` and ``connect-agent``
    as separate processes on the channel. Yields once the agent's status says it is
    online with the bus, the button and a GPS fix; stops everything, the agent with
    SIGTERM (it must exit 0). With the ``hil_ecu`` marker, ``hw-sim ecu`` starts before
    the agent, so the agent reads the VIN and the DTCs from it over UDS."""
    workdir = tmp_path / "gpsfake"
    workdir.mkdir()
    async with Mosquitto() as broker:
        with gpsfake_gpsd(route_to_nmea(load_route()), workdir) as (_, gpsd_port):
            async with SimulatedBackend("127.0.0.1", broker.port) as backend:
                installation = Stack(hil_settings, tmp_path, broker.port, gpsd_port, backend)
                problems: list[str] = []
                try:
                    await installation.start_car()
                    if request.node.get_closest_marker("hil_ecu"):
                        await installation.start_ecu()
                    await installation.start_agent()
                    await installation.wait_ready()
                    yield installation
                finally:
                    problems = await installation.aclose()
                    print(installation.logs())  # shown when the test failed
    if problems:
        pytest.fail("; ".join(problems))
