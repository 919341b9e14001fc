"""The floor: paho-mqtt's own QoS-1 round trip on loopback, without the agent.

    python -m bench.mqtt_floor --port PORT [--count 300] [--size 2500]

One process, one thread, paho's select loop: publish a payload of ``--size`` bytes to
``bench/floor/<n>`` at QoS 1 and spin the loop until its PUBACK; then a short pause and the
next. Prints ``{"sent": [[n, published_at, puback_at], ...]}`` (monotonic seconds); the raw
subscriber (bench.subscriber) records when each one arrived there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PAUSE_S = 0.005


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--size", type=int, default=2500)
    args = parser.parse_args()

    acked: dict[int, float] = {}
    connected: list[bool] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-floor-{time.monotonic_ns()}",
        protocol=mqtt.MQTTv5,
    )

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        connected.append(True)

    def on_publish(c: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        acked[mid] = time.monotonic()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", args.port, 30)
    deadline = time.monotonic() + 10
    while not connected and time.monotonic() < deadline:
        client.loop(0.1)
    if not connected:
        print("no CONNACK", file=sys.stderr)
        return 1

    sent: list[tuple[int, float, float]] = []
    filler = b"x" * max(0, args.size - 10)
    for n in range(args.count):
        payload = b"%010d" % n + filler
        t0 = time.monotonic()
        info = client.publish(f"bench/floor/{n}", payload, qos=1)
        deadline = t0 + 5
        while info.mid not in acked and time.monotonic() < deadline:
            client.loop(0.5)
        if info.mid in acked:
            sent.append((n, t0, acked.pop(info.mid)))
        pause_until = time.monotonic() + PAUSE_S
        while (left := pause_until - time.monotonic()) > 0:
            client.loop(left)
    client.disconnect()
    print(json.dumps({"sent": sent}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
