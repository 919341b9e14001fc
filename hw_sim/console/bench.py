"""How fast the console is: ``python -m hw_sim.console.bench [--calls N] [--embedded-broker]``.

Runs the whole loop of ``hw-sim demo --web`` and prints, without a browser:

* first load: the page and its assets fetched over HTTP one after the other, as a browser's
  first visit would (the browser test adds the rendering: ``artifacts/console-timing.json``);
* the live updates: from the LED frame on the CAN bus, and from the request's arrival at the
  backend over MQTT, to the message on the page's WebSocket;
* the operator's answer: from the ``received`` action on the WebSocket to ``connected`` on the
  LED, through MQTT, the agent and CAN.

A script that prints numbers, not a test: the test suite asserts no timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from hw_sim.console.run import web_demo
from hw_sim.matrix import LedMode

ASSETS = ("", "static/console.css", "static/console.js", "static/favicon.svg")


def _stats(name: str, values: list[float]) -> str:
    values = sorted(values)
    return (
        f"{name:<44} median {statistics.median(values):7.2f} ms   "
        f"max {values[-1]:7.2f} ms   (n={len(values)})"
    )


async def _first_load(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    for path in ASSETS:
        async with session.get(url + path) as response:
            size += len(await response.read())
    return (time.perf_counter() - started) * 1000, size


async def bench(calls: int, embedded_broker: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        async with (
            web_demo(Path(tmp), port=0, embedded_broker=embedded_broker, gps_interval=0.2) as (
                console,
                sim,
            ),
            aiohttp.ClientSession() as session,
        ):
            loads = []
            for _ in range(10):
                ms, size = await _first_load(session, console.url)
                loads.append(ms)
            await sim.agent.wait_gps_fix(timeout=10)
            inbox: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
            led_ms: list[float] = []
            card_ms: list[float] = []
            answer_ms: list[float] = []
            async with session.ws_connect(console.url + "ws") as ws:

                async def read() -> None:
                    async for message in ws:
                        inbox.put_nowait((time.monotonic(), json.loads(message.data)))

                reader = asyncio.create_task(read(), name="bench-reader")
                try:
                    for _ in range(calls):
                        await ws.send_str(json.dumps({"type": "button", "pressed": True}))
                        await asyncio.sleep(2.2)  # the driver's hold
                        await ws.send_str(json.dumps({"type": "button", "pressed": False}))
                        led_at, card_at = await _expect(
                            inbox, (("led", "led.mode", "calling"), ("card", "card.state", "new"))
                        )
                        calling = next(
                            t for t, m in reversed(sim.led.modes) if m is LedMode.CALLING
                        )
                        led_ms.append((led_at - calling) * 1000)
                        request = sim.backend.of_kind("request")[-1]
                        card_ms.append((card_at - request.at) * 1000)
                        incident = request.payload["incident_id"]
                        sent = time.monotonic()
                        await ws.send_str(
                            json.dumps(
                                {"type": "ack", "incident_id": incident, "status": "received"}
                            )
                        )
                        connected = await sim.led.wait_for(LedMode.CONNECTED, timeout=10)
                        answer_ms.append((connected - sent) * 1000)
                        await ws.send_str(
                            json.dumps({"type": "ack", "incident_id": incident, "status": "closed"})
                        )
                        await sim.led.wait_for(LedMode.READY, timeout=10)
                finally:
                    await ws.close()
                    await reader
    print(f"page and assets: {size} bytes, uncompressed")
    print(_stats("first load over HTTP (page + 3 assets)", loads))
    print(_stats("LED frame on CAN -> WebSocket message", led_ms))
    print(_stats("request at the backend -> card on WebSocket", card_ms))
    print(_stats("operator 'received' -> LED connected on CAN", answer_ms))


async def _expect(
    inbox: asyncio.Queue[tuple[float, dict[str, Any]]], wanted: tuple[tuple[str, str, object], ...]
) -> list[float]:
    """Receipt times of the first message matching each (type, dotted key, value), in
    whatever order they come."""
    found: dict[int, float] = {}
    async with asyncio.timeout(10):
        while len(found) < len(wanted):
            at, data = await inbox.get()
            for i, (kind, key, value) in enumerate(wanted):
                if i not in found and data["type"] == kind and _get(data, key) == value:
                    found[i] = at
    return [found[i] for i in range(len(wanted))]


def _get(data: dict[str, Any], dotted: str) -> object:
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--embedded-broker", action="store_true")
    args = parser.parse_args()
    asyncio.run(bench(args.calls, args.embedded_broker))


if __name__ == "__main__":
    main()
