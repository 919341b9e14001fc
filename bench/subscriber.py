"""A raw paho-mqtt subscriber in a process of its own: when did each message arrive?

    python -m bench.subscriber --port PORT --out FILE [--ack closed]

Subscribes (QoS 1) to every vehicle's ``request`` and ``status`` and to ``bench/floor/#``, and
for each message appends one JSON line to FILE with ``time.monotonic()`` taken first thing in
``on_message``. With ``--ack`` it also plays the backend: it answers each new request with that
ack status (``closed`` ends the incident at once, so the next hold opens a new one). It prints
``ready`` on stdout once the broker has granted the subscriptions. paho's own loop, one thread.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = "assistance/v1"
FLOOR = "bench/floor"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ack", default=None, help="answer each request with this status")
    args = parser.parse_args()

    out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 - for the life of the process
    answered: set[str] = set()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-subscriber-{time.monotonic_ns()}"
    )

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        c.subscribe([(f"{ROOT}/+/request", 1), (f"{ROOT}/+/status", 1), (f"{FLOOR}/#", 1)])

    def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        print("ready", flush=True)

    def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        topic = message.topic
        record: dict[str, Any] = {"t": t, "topic": topic, "bytes": len(message.payload)}
        if topic.startswith(FLOOR):
            record.update(kind="floor", n=int(message.payload[:10]))
        elif topic.endswith("/request"):
            body = json.loads(message.payload)
            record.update(kind="request", id=body["incident_id"], seq=body["sequence"])
            if args.ack and body["incident_id"] not in answered:
                answered.add(body["incident_id"])
                ack = {"incident_id": body["incident_id"], "status": args.ack}
                c.publish(topic.rsplit("/", 1)[0] + "/ack", json.dumps(ack), qos=1)
        elif topic.endswith("/status") and message.payload:
            body = json.loads(message.payload)
            record.update(
                kind="status", state=body.get("state"), gps=body.get("gps"), retain=message.retain
            )
        out.write(json.dumps(record) + "\n")
        out.flush()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect("127.0.0.1", args.port, 30)
    client.loop_forever()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
