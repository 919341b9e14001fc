"""``hw-sim demo``: the whole loop in one process, on the embedded defaults.

python-can ``virtual`` bus with the simulated car, a fake gpsd replaying a route, a broker
(Mosquitto when installed, else the embedded one), the simulated backend and the real agent.
It holds CONNECT for 2.2 s, then prints what the backend received, the LED sequence and the
time from the hold threshold to delivery.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from hw_sim.broker import EmbeddedBroker
from hw_sim.gpsd import FakeGpsd
from hw_sim.matrix import LedMode
from hw_sim.mosquitto import Mosquitto, find_mosquitto
from hw_sim.scenario import VIN, Scenario


@contextlib.asynccontextmanager
async def any_broker(embedded: bool) -> AsyncIterator[tuple[str, int]]:
    """Mosquitto when installed (and not refused), else the embedded broker."""
    if not embedded and find_mosquitto():
        async with Mosquitto(persistence=False) as mosquitto:
            yield "Mosquitto", mosquitto.port
    else:
        async with EmbeddedBroker() as broker:
            yield "embedded broker", broker.port


def say(text: str = "") -> None:
    print(text, flush=True)


def log_to_stderr(verbose: bool) -> None:
    """The demo's own log: the agent's lines with -v, warnings otherwise."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


async def run_demo(
    *, embedded_broker: bool = False, protocol: str = "5", verbose: bool = False
) -> int:
    log_to_stderr(verbose)
    with tempfile.TemporaryDirectory(prefix="connect-demo-") as tmp:
        async with any_broker(embedded_broker) as (broker_name, port), FakeGpsd() as gpsd:
            say(f"broker:  {broker_name} on 127.0.0.1:{port} (MQTT {protocol})")
            say(f"gpsd:    fake gpsd on 127.0.0.1:{gpsd.port}, replaying the A1 near Bern")
            async with Scenario(Path(tmp), port, gpsd.port, protocol=protocol) as sim:
                say(f"CAN:     python-can virtual bus {sim.channel!r}")
                say("agent:   online, LED ready; waiting for a GPS fix ...")
                await sim.agent.wait_gps_fix(timeout=10)
                say("driver:  holds CONNECT for 2.2 s")
                await sim.car.hold(2200)
                [received] = await sim.backend.wait_for("request", 1, timeout=10)
                await sim.led.wait_for(LedMode.CONNECTED, timeout=10)
                call = sim.agent.calls[0]
                puback = sim.agent.deliveries[("request", call.incident_id, call.sequence)]
                say("\nthe request as the backend received it:")
                say(json.dumps(received.payload, indent=2, ensure_ascii=False))
                problems = [p for _, p in sim.backend.invalid]
                say(f"\nschema:  {problems or 'valid'}")
                for what, at in (
                    ("request on disk", call.stored_at),
                    ("backend has the request", received.at),
                    ("PUBACK at the agent", puback),
                ):
                    say(f"hold threshold -> {what:<24}{_ms(at - call.held_at)}")
                say("backend: acknowledged 'received'; the operator now closes the incident")
                sim.backend.ack(VIN, call.incident_id, "closed")
                await sim.led.wait_for(LedMode.READY, timeout=10)
                say("LED:     " + " -> ".join(sim.led.sequence()))
    if problems:
        say("demo: FAILED (the request does not match the schema)")
        return 1
    say("demo: OK")
    return 0
