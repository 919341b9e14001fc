"""The call gets through on the links a car has (issue 15), against a real Mosquitto.

The agent reaches the broker through ``hw_sim.link.Link``, a relay on real sockets; the
backend has its own direct connection. A frozen link is a path that died without a word:
no FIN, no RST, nothing forwarded, while a new connection works (a new NAT mapping).
"""

from __future__ import annotations

import asyncio
import bisect
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.core.frames import LedMode
from hw_sim.backend import SimulatedBackend
from hw_sim.gpsd import FakeGpsd
from hw_sim.link import Link, LinkMode
from hw_sim.mosquitto import Mosquitto
from hw_sim.scenario import Scenario

pytestmark = pytest.mark.asyncio


def assert_once(backend: SimulatedBackend, incident_id: str) -> None:
    """Only this call arrived; any duplicate carries the same (incident_id, sequence)."""
    keys = {(r.payload["incident_id"], r.payload["sequence"]) for r in backend.of_kind("request")}
    assert keys == {(incident_id, 1)}
    assert backend.invalid == []


def mqtt_packets(chunks: Sequence[tuple[float, bytes]]) -> list[tuple[float, int, bytes]]:
    """(when its first byte was read, packet type, body) of each MQTT packet in one direction
    of one connection: the fixed header is read here, by the standard (MQTT 5 2.1)."""
    stream = b"".join(data for _, data in chunks)
    starts, offset = [], 0
    for _, data in chunks:
        starts.append(offset)
        offset += len(data)
    out, at = [], 0
    while at < len(stream):
        kind, length, shift, at = stream[at] >> 4, 0, 0, at + 1
        while True:  # the Remaining Length, a variable byte integer
            byte, at = stream[at], at + 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        first = bisect.bisect_right(starts, at - 1) - 1
        out.append((chunks[first][0], kind, stream[at : at + length]))
        at += length
    return out


PUBLISH, PINGREQ = 3, 12


async def test_a_request_waiting_for_its_puback_is_followed_by_loss_probes(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    """While a request waits for its PUBACK (here 0.5 s one way), PINGREQs follow it on the
    wire every ``mqtt.loss_probe_s``: a lost request is then resent after about a round trip
    (the kernel's RACK) instead of its retransmission timeout. They stop at the PUBACK."""
    overrides = {"mqtt.loss_probe_s": "0.2"}
    async with (
        Link(mosquitto.port, mode=LinkMode(delay_s=0.5), record=True) as link,
        Scenario(
            tmp_path, link.port, fake_gpsd.port, backend_port=mosquitto.port, overrides=overrides
        ) as sim,
    ):
        await sim.agent.wait_until(lambda: sim.agent.uplink.connected, 20)
        await sim.agent.wait_until(lambda: not sim.agent.uplink._inflight, 20)
        connects = sim.agent.uplink.connects
        await sim.car.hold(2100)
        await sim.backend.wait_for("request", 1, timeout=30)
        incident = sim.agent.calls[0].incident_id
        await sim.agent.wait_until(lambda: ("request", incident, 1) in sim.agent.deliveries, 30)
        acked = sim.agent.deliveries[("request", incident, 1)]
        assert link.recorded is not None
        probes = sim.agent.uplink.counters.get("loss_probes", 0)
        await asyncio.sleep(1.5)  # nothing waits for a PUBACK: no more probes
        assert sim.agent.uplink.counters.get("loss_probes", 0) == probes
        assert sim.agent.uplink.connects == connects  # one connection: one stream to read
        up = mqtt_packets([(t, data) for t, way, data in link.recorded if way == "up"])
    [sent] = [t for t, kind, body in up if kind == PUBLISH and b"/request" in body[:200]]
    pings = [t for t, kind, _ in up if kind == PINGREQ and t > sent]
    assert len(pings) >= 2, up  # 20 ms after the request, then every 0.2 s until the PUBACK
    assert len(pings) == probes  # all of them the loss probes (the keep-alive is 20 s)
    assert all(t < acked for t in pings)
    assert_once(sim.backend, incident)


async def test_a_request_into_a_frozen_link_is_delivered_on_a_new_connection(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    """The MQTT keep-alive would notice after 1.5 x 20 s; the publish deadline (here 1.5 s,
    by ``mqtt.publish_timeout_s``) does."""
    overrides = {"mqtt.publish_timeout_s": "1.5"}
    async with (
        Link(mosquitto.port) as link,
        Scenario(
            tmp_path, link.port, fake_gpsd.port, backend_port=mosquitto.port, overrides=overrides
        ) as sim,
    ):
        await sim.agent.wait_until(lambda: sim.agent.uplink.connected, 10)
        assert link.freeze() == 1  # the agent's connection, silently dead
        connects = sim.agent.uplink.connects
        await sim.car.hold(2100)
        threshold = time.monotonic() - 0.1
        [request] = await sim.backend.wait_for("request", 1, timeout=15)
        arrived = request.at - threshold
        await sim.led.wait_for(LedMode.CONNECTED, timeout=10)
        assert sim.agent.uplink.counters["publish_timeouts"] >= 1
        assert sim.agent.uplink.connects > connects  # a new connection carried it
        call = sim.agent.calls[0]
    assert_once(sim.backend, call.incident_id)
    assert arrived < 10  # the deadline and an immediate reconnect, not the keep-alive


async def test_a_press_while_disconnected_connects_at_once(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    """A broker back while the agent sleeps a long backoff (up to 60 s): the press does not
    wait for the end of it."""
    overrides = {"mqtt.reconnect_min_s": "60", "mqtt.reconnect_max_s": "600"}
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port, overrides=overrides) as sim:
        await sim.agent.wait_until(lambda: sim.agent.uplink.connected, 10)
        attempts = sim.agent.uplink.attempts
        await mosquitto.stop()
        await sim.agent.wait_until(lambda: sim.agent.uplink.attempts > attempts, 10)
        await mosquitto.start()  # back, but the agent sleeps its backoff
        held = time.monotonic()
        await sim.car.hold(2100)
        [request] = await sim.backend.wait_for("request", 1, timeout=30)
        waited = request.at - held
        call = sim.agent.calls[0]
    assert_once(sim.backend, call.incident_id)
    assert waited < 8  # 2.1 s of holding and a connect; the backoff would be U(0, 60) s


async def test_the_mqtt_socket_is_watched_by_the_kernel_too(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> None:
    """TCP keep-alive (10 s idle, 3 probes 5 s apart) and TCP_USER_TIMEOUT (20 s): a dead path
    ends the connection in bounded time even with nothing urgent in flight. And the options of
    a thin stream: linear retransmission timeouts (Linux's 16) and no Nagle."""
    async with Scenario(tmp_path, mosquitto.port, fake_gpsd.port) as sim:
        await sim.agent.wait_until(lambda: sim.agent.uplink.connected, 10)
        client = sim.agent.uplink._client
        assert client is not None
        sock = client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        tcp = {
            name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
            for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")
        }
        tcp["TCP_NODELAY"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        tcp["TCP_THIN_LINEAR_TIMEOUTS"] = sock.getsockopt(socket.IPPROTO_TCP, 16)
    assert tcp == {
        "TCP_KEEPIDLE": 10,
        "TCP_KEEPINTVL": 5,
        "TCP_KEEPCNT": 3,
        "TCP_USER_TIMEOUT": 20_000,
        "TCP_NODELAY": 1,
        "TCP_THIN_LINEAR_TIMEOUTS": 1,
    }
