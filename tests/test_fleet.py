"""``make fleet`` in small: 20 simulated cars and the real agent, real Mosquitto, a real 3-node
NATS cluster, one kill (of the agent's node).

The fleet runs as ``python -m bench.fleet`` does under ``make fleet``; its oracle is the backend
simulator (paho, not the cars' codec), which must have received every request and cancel the
cars sent. The same run with the cars' re-sending switched off must report a loss: the kill
comes before the PUBACK of the calls written just before it, so the check can fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from peers import require

from hw_sim.contract import errors
from hw_sim.fleet_wire import (
    cancel_payload,
    encode_connect,
    encode_subscribe,
    fleet_vin,
    request_payload,
    status_payload,
)
from hw_sim.mqtt_codec import PacketType, decode_connect, decode_subscribe, decode_varint

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "--cars",
    "20",
    "--kills",
    "1",
    "--quick",
    "--storm-window",
    "2",
    "--outage",
    "1",
    "--budget",
    "20",
]


INCIDENT = "0b5e4a52-6f1d-4c3e-9a55-3f3c2d1e0f11"


def test_what_a_fleet_car_sends_is_valid_under_the_contracts_schemas() -> None:
    vin = fleet_vin(123)
    assert errors("request", json.loads(request_payload(vin, INCIDENT, 1))) == []
    assert errors("cancel", json.loads(cancel_payload(INCIDENT, 1))) == []
    for state in ("online", "offline"):
        assert errors("status", json.loads(status_payload(state, INCIDENT, 2))) == []


def test_a_fleet_cars_connect_and_subscribe_decode_in_the_brokers_codec() -> None:
    will = status_payload("offline", None, 0)
    packet = encode_connect("connect-agent-X", 20, "assistance/v1/X/status", will)
    assert packet[0] >> 4 == PacketType.CONNECT
    length, start = decode_varint(packet, 1)
    assert len(packet) == start + length
    connect = decode_connect(packet[start:])
    assert (connect.version, connect.client_id) == (4, "connect-agent-X")
    assert (connect.clean_start, connect.keep_alive) == (False, 20)
    assert connect.will is not None
    assert (connect.will.qos, connect.will.retain, connect.will.payload) == (1, True, will)
    subscribe = decode_subscribe(encode_subscribe(7, "assistance/v1/X/ack", 1)[2:], 4)
    assert subscribe.packet_id == 7
    assert [(r.topic_filter, r.qos) for r in subscribe.requests] == [("assistance/v1/X/ack", 1)]


def fleet(*extra: str) -> subprocess.CompletedProcess[str]:
    require("mosquitto")
    require("nats-server")
    return subprocess.run(
        [sys.executable, "-m", "bench.fleet", *TINY, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def last_line(run: subprocess.CompletedProcess[str]) -> str:
    lines = run.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def test_a_tiny_fleet_loses_nothing_when_a_node_dies() -> None:
    run = fleet()
    assert last_line(run) == "failover: 1 node kills, lost: 0", run.stdout + run.stderr
    assert run.returncode == 0
    assert "reconnect after Mosquitto restart" in run.stdout
    assert "keep-alive 300 s" in run.stdout
    # acks route back: every car's request answered at the car, through the node it moved to
    [acks] = re.findall(r"acks back at the cars for (\d+)/(\d+) requests", run.stdout)
    assert acks[0] == acks[1] != "0", run.stdout
    # The real agent rode along: its node was the one killed, and its call came through.
    [agent] = [
        line for line in run.stdout.splitlines() if line.startswith("NATS failover: the real")
    ]
    assert " came through " in agent, agent
    assert "kill 1: request not yet PUBACKed at the kill, connected after " in agent, agent
    assert "; 0 of its 1 requests and cancels missing" in agent, agent


def test_without_resending_the_check_reports_the_loss() -> None:
    # every car of the killed node calls just before the kill; what is lost does not come later
    run = fleet("--no-resend", "--in-flight", "20", "--settle", "15")
    line = last_line(run)
    assert line.startswith("failover: 1 node kills, lost: "), run.stdout + run.stderr
    assert int(line.rsplit(" ", 1)[1]) > 0, run.stdout
    assert run.returncode == 1
