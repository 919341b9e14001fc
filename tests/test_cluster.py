"""Failover across a broker cluster (issue 18): the real agent against 3 real NATS nodes.

The agent lists two nodes in ``mqtt.host`` (MQTT 3.1.1, the protocol NATS speaks); the
backend consumer is connected through the third, which is never killed. A node the agent is
connected to is SIGKILLed: as a crash (its kernel resets the connections) or as a lost
machine (the agent's path goes silent first: nothing more arrives, no FIN, no RST). The
agent must move to the other node, and every request, cancel and update must reach the
backend, with its ack routed back; a duplicate carries the same (incident_id, sequence).

NATS keeps MQTT sessions and QoS 1 messages in JetStream streams replicated to all three
nodes; after a kill it elects new stream leaders, and a session that moves to another node
waits several seconds for its CONNACK. Deadlines here are generous for that reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import pytest_asyncio
from peers import require

from agent.core.frames import LedMode
from agent.uplink import Uplink
from hw_sim.backend import SimulatedBackend
from hw_sim.gpsd import FakeGpsd
from hw_sim.link import Link, LinkMode
from hw_sim.nats_cluster import NatsCluster
from hw_sim.scenario import VIN, Scenario

pytestmark = pytest.mark.asyncio

FAILOVER_S = 90.0  # a moved session's CONNACK takes about 12 s; loaded CI, several moves
BACKEND = 2  # the node the backend consumer uses; never killed


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[NatsCluster]:
    require("nats-server")
    async with NatsCluster() as nats:
        yield nats


def keys(backend: SimulatedBackend, kind: str) -> list[tuple[str, int]]:
    return [(r.payload["incident_id"], r.payload["sequence"]) for r in backend.of_kind(kind)]


def node_of(cluster: NatsCluster, broker: str) -> int:
    """The node behind the agent's ``broker`` ("host:port")."""
    return cluster.index_of(int(broker.rsplit(":", 1)[1]))


def moved(cluster: NatsCluster, uplink: Uplink, victim: int) -> bool:
    return uplink.connected and node_of(cluster, uplink.broker) != victim


def hosts(*ports: int) -> str:
    return ",".join(f"127.0.0.1:{port}" for port in ports)


@pytest.mark.parametrize("death", ["crash", "machine lost"])
async def test_the_node_dies_between_the_hold_threshold_and_the_puback(
    tmp_path: Path, cluster: NatsCluster, fake_gpsd: FakeGpsd, death: str
) -> None:
    """The request has left for node 0 (behind a link with 400 ms each way, so its PUBACK
    cannot be back yet) when node 0 is killed. It may or may not have been stored by the
    cluster; either way it reaches the backend on node 2, and the ack comes back through
    node 1."""
    n0, n1, n2 = (node.mqtt_port for node in cluster.nodes)
    async with Link(n0, mode=LinkMode(delay_s=0.4)) as link:
        overrides = {"mqtt.host": hosts(link.port, n1)}
        async with Scenario(
            tmp_path,
            link.port,
            fake_gpsd.port,
            protocol="3.1.1",
            backend_port=n2,
            overrides=overrides,
        ) as sim:
            uplink = sim.agent.uplink
            assert uplink.broker == f"127.0.0.1:{link.port}"
            sent = link.counters["bytes_up"]
            await sim.car.hold(2100)
            await sim.led.wait_for(LedMode.CALLING, timeout=10)
            await sim.agent.wait_until(lambda: link.counters["bytes_up"] > sent, 10)
            if death == "machine lost":
                assert link.freeze() == 1  # silence first: no RST will reach the agent
            await cluster.kill(0)
            assert [e.kind for e in sim.agent.outbox.pending()] == ["request"]  # no PUBACK yet
            killed = time.monotonic()
            [request] = await sim.backend.wait_for("request", 1, timeout=FAILOVER_S)
            await sim.led.wait_for(LedMode.CONNECTED, timeout=FAILOVER_S)  # the ack came back
            await sim.agent.wait_until(lambda: sim.agent.outbox.count() == 0, FAILOVER_S)
            assert uplink.broker == f"127.0.0.1:{n1}"
            await sim.backend.wait_status(VIN, "broker", f"127.0.0.1:{n1}", timeout=FAILOVER_S)
            incident_id = sim.agent.calls[0].incident_id
            print(f"{death}: request at the backend {request.at - killed:.1f} s after the kill")
    assert set(keys(sim.backend, "request")) == {(incident_id, 1)}  # duplicates: same key
    assert sim.backend.invalid == []


async def test_random_node_kills_during_an_open_incident_lose_nothing(
    tmp_path: Path, cluster: NatsCluster, fake_gpsd: FakeGpsd
) -> None:
    """Four kills of the agent's node at random moments while the incident is open and updates
    flow, each node restarted after it; then the driver cancels and calls again. Every update
    (sequences 1..n without a gap) and the cancel reach the backend, and the new call's ack
    comes back to the car."""
    rng = random.Random(18)
    n0, n1, n2 = (node.mqtt_port for node in cluster.nodes)
    overrides = {"mqtt.host": hosts(n0, n1), "button.cancel_window_s": "600"}
    async with Scenario(
        tmp_path, n0, fake_gpsd.port, protocol="3.1.1", backend_port=n2, overrides=overrides
    ) as sim:
        uplink = sim.agent.uplink
        sim.agent.update_interval_s = 0.5  # SPEC: at most every 10 s; compressed for the test
        await sim.car.hold(2100)
        await sim.led.wait_for(LedMode.CONNECTED, timeout=FAILOVER_S)
        battery = 12.6
        for kill in range(4):
            battery -= 0.1
            sim.car.set_status(battery_12v_v=round(battery, 1))  # a change: an update is due
            await sim.agent.wait_until(lambda: uplink.connected, FAILOVER_S)
            victim = node_of(cluster, uplink.broker)
            assert victim != BACKEND
            await asyncio.sleep(rng.uniform(0.0, 2.0))  # a random moment
            await cluster.kill(victim)
            battery -= 0.1
            sim.car.set_status(battery_12v_v=round(battery, 1))  # an update while it moves
            await sim.agent.wait_until(partial(moved, cluster, uplink, victim), FAILOVER_S)
            await cluster.start_node(victim)
            print(f"kill {kill + 1}: node {victim}, the agent moved to {uplink.broker}")
        await sim.agent.wait_until(lambda: sim.agent.outbox.count() == 0, FAILOVER_S)
        await sim.car.hold(2100)  # the driver cancels
        [cancel] = await sim.backend.wait_for("cancel", 1, timeout=FAILOVER_S)
        await sim.agent.wait_until(lambda: sim.agent.outbox.count() == 0, FAILOVER_S)
        await sim.led.wait_for(LedMode.READY, timeout=FAILOVER_S)
        await sim.car.hold(2100)  # a new call after the kills: its ack still finds the car
        await sim.led.wait_for(LedMode.CONNECTED, timeout=FAILOVER_S)
        incident_id, second = (call.incident_id for call in sim.agent.calls)
        delivered = sorted((i, s) for k, i, s in sim.agent.recorder.deliveries if k == "update")
    updates = sorted(set(keys(sim.backend, "update")))
    assert set(delivered) <= set(updates)  # each update PUBACKed by a node reached the backend
    updates = [key for key in updates if key[0] == incident_id]  # not the second call's
    assert updates == [(incident_id, s) for s in range(1, len(updates) + 1)]
    assert len(updates) >= 8  # one before and one during each move, at least
    assert set(keys(sim.backend, "request")) == {(incident_id, 1), (second, 1)}
    assert cancel.payload["incident_id"] == incident_id
    assert sim.backend.invalid == []
