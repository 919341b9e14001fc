"""The MQTT 5 limits of production brokers, as the agent honours them (issue 18).

Unit tests of :mod:`agent.broker_limits`, with ``publish_size`` checked against the bytes paho
really writes on a socket; then the real agent against the embedded broker told to behave like a
production broker (:class:`hw_sim.broker_record.ProductionLimits`, refusals, held PUBACKs). The
oracle is the broker's own record of what arrived on the wire, decoded by its own codec.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import pytest_asyncio
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.broker_limits import BUSY_REASONS, PAHO_INFLIGHT, BrokerLimits, publish_size
from hw_sim.broker import EmbeddedBroker
from hw_sim.broker_record import ProductionLimits, PublishRecord, property_of, user_properties
from hw_sim.gpsd import FakeGpsd
from hw_sim.matrix import LedMode
from hw_sim.mqtt_codec import Prop
from hw_sim.scenario import VIN, Scenario

CLIENT = f"connect-agent-{VIN}"
ROOT = f"assistance/v1/{VIN}"
SCHEMA = ("schema", "1")
DEADLINE = 20.0  # generous: a loaded 2-core machine


# -- BrokerLimits: pure ---------------------------------------------------------------------------


def connack(**values: int) -> Properties:
    props = Properties(PacketTypes.CONNACK)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def test_absent_properties_are_mqtt5_defaults() -> None:
    for props in (None, connack()):
        limits = BrokerLimits.from_connack(props)
        assert limits == BrokerLimits(65535, None, None, None)
        assert limits.inflight == PAHO_INFLIGHT == 20
        assert limits.fits(268_435_455)
        assert limits.describe(604800, 20) == []


def test_limits_are_read_from_a_connack() -> None:
    props = connack(
        ReceiveMaximum=7, MaximumPacketSize=1200, SessionExpiryInterval=60, ServerKeepAlive=5
    )
    limits = BrokerLimits.from_connack(props)
    assert limits == BrokerLimits(7, 1200, 60, 5)
    assert limits.describe(604800, 20) == [
        "receive maximum 7",
        "maximum packet size 1200 bytes",
        "session expiry 60 s (asked 604800 s)",
        "keep-alive 5 s (asked 20 s)",
    ]
    assert limits.describe(60, 5) == ["receive maximum 7", "maximum packet size 1200 bytes"]


@pytest.mark.parametrize(
    ("receive_maximum", "inflight"), [(1, 1), (2, 2), (19, 19), (20, 20), (21, 20), (65535, 20)]
)
def test_the_window_is_the_brokers_or_paho_s(receive_maximum: int, inflight: int) -> None:
    assert BrokerLimits(receive_maximum=receive_maximum).inflight == inflight


def test_a_zero_receive_maximum_still_leaves_a_window_of_one() -> None:
    assert BrokerLimits(receive_maximum=0).inflight == 1  # a protocol error; never stall


def test_fits_is_inclusive() -> None:
    limits = BrokerLimits(maximum_packet_size=1200)
    assert limits.fits(1200)
    assert not limits.fits(1201)


def test_busy_reasons_are_the_three_that_mean_not_now() -> None:
    assert set(BUSY_REASONS) == {0x89, 0x97, 0x9F}


def agent_like_properties(expiry: int | None = None) -> Properties:
    """The properties the uplink puts on a request or update."""
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.PayloadFormatIndicator = 1
    props.UserProperty = SCHEMA
    props.ResponseTopic = f"{ROOT}/ack"
    props.CorrelationData = b"0b1e9c52-4d0e-4a6e-9a43-1f6e3c2a7d10"
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    return props


# payload lengths that put the Remaining Length on either side of 127/128 and 16383/16384
SIZES = [0, 1, *range(20, 140, 3), *range(16200, 16400, 9), 200_000]


async def paho_publishes(
    broker: EmbeddedBroker,
    version: MQTTProtocolVersion,
    messages: list[tuple[str, bytes, Properties | None, int]],
) -> list[PublishRecord]:
    """Publish ``messages`` with a real paho client; what the broker read off the socket."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sizer", protocol=version)
    await asyncio.to_thread(client.connect, "127.0.0.1", broker.port, 30)
    client.loop_start()
    try:
        for topic, payload, props, qos in messages:
            client.publish(topic, payload, qos=qos, properties=props)
        async with asyncio.timeout(DEADLINE):
            await broker.wait_for(lambda b: len(b.record.publishes_of("sizer")) == len(messages))
    finally:
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
    return broker.record.publishes_of("sizer")


@pytest.mark.asyncio
async def test_publish_size_is_exactly_what_paho_writes() -> None:
    messages: list[tuple[str, bytes, Properties | None, int]] = []
    empty = Properties(PacketTypes.PUBLISH)
    for n in SIZES:
        # None means MQTT 3.1.1 (below): under 5 paho writes an empty property block
        for props in (agent_like_properties(), agent_like_properties(599), empty):
            for qos in (0, 1):
                messages.append((f"{ROOT}/update/{len(messages)}", b"x" * n, props, qos))
    async with EmbeddedBroker() as broker:
        records = await paho_publishes(broker, mqtt.MQTTv5, messages)
    by_topic = {r.topic: r for r in records}  # QoS 0 may overtake QoS 1 in paho's queue
    assert len(by_topic) == len(messages)
    for topic, payload, props, qos in messages:
        record = by_topic[topic]
        assert (record.payload, record.qos) == (payload, qos)
        assert publish_size(topic, payload, props, qos) == record.size, (len(payload), qos)


@pytest.mark.asyncio
async def test_publish_size_without_properties_is_what_paho_writes_in_311() -> None:
    messages: list[tuple[str, bytes, Properties | None, int]] = [
        (f"{ROOT}/request", b"y" * n, None, 1) for n in SIZES
    ]
    async with EmbeddedBroker() as broker:
        records = await paho_publishes(broker, mqtt.MQTTv311, messages)
    assert [publish_size(t, p, None) for t, p, _, _ in messages] == [r.size for r in records]


# -- the agent against a broker that enforces limits ----------------------------------------------


BrokerFactory = Callable[..., EmbeddedBroker]


@pytest_asyncio.fixture
async def production() -> AsyncIterator[BrokerFactory]:
    """``production(limits=..., max_packet_size=...)``: an embedded broker, started on entry of
    ``async with``; closed after the test whatever happened."""
    made: list[EmbeddedBroker] = []

    def make(**options: Any) -> EmbeddedBroker:
        made.append(EmbeddedBroker(**options))
        return made[-1]

    yield make
    for broker in made:
        await broker.aclose()


def agent_publishes(broker: EmbeddedBroker, kind: str | None = None) -> list[PublishRecord]:
    records = broker.record.publishes_of(CLIENT)
    return [r for r in records if kind is None or r.topic == f"{ROOT}/{kind}"]


def kind_of(record: PublishRecord) -> str:
    return record.topic.rsplit("/", 1)[-1]


async def until(broker: EmbeddedBroker, predicate: Callable[[EmbeddedBroker], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        await broker.wait_for(predicate)


def assert_schema_everywhere(broker: EmbeddedBroker) -> None:
    """Every JSON message of the agent (and its Will) carries schema=1, once."""
    records = agent_publishes(broker)
    assert records
    for record in records:
        assert record.user_properties == [SCHEMA], (record.topic, record.properties)
        assert record.prop(Prop.CONTENT_TYPE) == "application/json"
    for connect in broker.record.connects_of(CLIENT):
        assert connect.will_properties is not None
        assert user_properties(connect.will_properties) == [SCHEMA]


@pytest.mark.asyncio
async def test_the_agent_keeps_what_the_connack_grants(
    tmp_path: Path,
    fake_gpsd: FakeGpsd,
    production: BrokerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = ProductionLimits(receive_maximum=7, server_keep_alive=10, max_session_expiry=60)
    caplog.set_level(logging.INFO, "agent.uplink")
    async with (
        production(limits=limits, max_packet_size=500_000) as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port) as sim,
    ):
        granted = sim.agent.uplink.limits
    assert granted == BrokerLimits(7, 500_000, 60, 10)
    assert (
        "the broker grants receive maximum 7, maximum packet size 500000 bytes, "
        "session expiry 60 s (asked 604800 s), keep-alive 10 s (asked 20 s)" in caplog.text
    )
    [connect] = broker.record.connects_of(CLIENT)
    assert property_of(connect.properties, Prop.SESSION_EXPIRY_INTERVAL) == 604800


@pytest.mark.asyncio
@pytest.mark.parametrize(("urgent", "cancel_window_s"), [("request", "0"), ("cancel", "600")])
async def test_receive_maximum_1_keeps_one_in_flight_and_the_call_goes_first(
    tmp_path: Path,
    fake_gpsd: FakeGpsd,
    production: BrokerFactory,
    urgent: str,
    cancel_window_s: str,
) -> None:
    """A second hold re-sends the request (after the cancel window) or cancels (within it);
    either waits for the window behind the update in flight, then goes before the status and
    the updates queued longer."""
    overrides = {
        "button.cancel_window_s": cancel_window_s,
        "mqtt.publish_timeout_s": "60",  # the window is held on purpose: not a dead link
    }
    async with (
        production(limits=ProductionLimits(receive_maximum=1)) as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port, overrides=overrides) as sim,
    ):
        assert sim.agent.uplink.limits.inflight == 1
        sim.agent.update_interval_s = 0.3
        await sim.car.hold(2100)
        [request] = await sim.backend.wait_for("request", 1, timeout=DEADLINE)
        await sim.agent.wait_until(lambda: sim.agent.outbox.count() == 0, DEADLINE)

        broker.hold_acks(CLIENT)
        sim.car.set_status(battery_12v_v=11.2)
        await until(broker, lambda b: b.held_acks(CLIENT) == 1)  # the window is full
        sim.car.set_status(battery_12v_v=11.0)  # another update: it waits in the outbox

        def queued_updates() -> int:
            return sum(e.kind == "update" for e in sim.agent.outbox.pending())

        await sim.agent.wait_until(lambda: queued_updates() >= 2, DEADLINE)
        await sim.car.hold(2100)
        await sim.agent.wait_until(
            lambda: any(e.kind == urgent for e in sim.agent.outbox.pending()), DEADLINE
        )
        assert broker.held_acks(CLIENT) == 1  # still only the one in flight
        before = len(agent_publishes(broker))

        broker.release_acks(CLIENT, 1)  # room for exactly one
        await until(broker, lambda b: len(agent_publishes(b)) > before)
        after = agent_publishes(broker)[before:]
        assert [kind_of(r) for r in after] == [urgent]  # first, and alone in the window

        broker.resume_acks(CLIENT)
        await sim.backend.wait_for(urgent, 2 if urgent == "request" else 1, timeout=DEADLINE)
        await sim.agent.wait_until(lambda: sim.agent.outbox.count() == 0, DEADLINE)
        if urgent == "cancel":
            await sim.led.wait_for(LedMode.READY, timeout=DEADLINE)
        connects = sim.agent.uplink.connects

    records = agent_publishes(broker)
    assert max(r.unacked for r in records) == 1
    assert broker.counters["receive_maximum_exceeded"] == 0
    assert connects == 1
    assert len({r.connection for r in records}) == 1
    assert [kind_of(r) for r in records].count("update") >= 2
    if urgent == "request":  # the same call, sent again
        sent = [json.loads(r.payload) for r in agent_publishes(broker, "request")]
        incident = request.payload["incident_id"]
        assert [(m["incident_id"], m["sequence"]) for m in sent] == [(incident, 1), (incident, 2)]
    assert_schema_everywhere(broker)


@pytest.mark.asyncio
async def test_a_request_behind_a_window_that_never_opens_goes_on_a_new_connection(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory
) -> None:
    """No PUBACK makes room (a dead path): the request waiting for the window gets the same
    publish deadline as one in flight, and a new connection carries it."""
    overrides = {"button.cancel_window_s": "0", "mqtt.publish_timeout_s": "1.5"}
    async with (
        production(limits=ProductionLimits(receive_maximum=1)) as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port, overrides=overrides) as sim,
    ):
        sim.agent.update_interval_s = 0.3
        await sim.car.hold(2100)
        [request] = await sim.backend.wait_for("request", 1, timeout=DEADLINE)
        await sim.agent.wait_until(lambda: sim.agent.outbox.count() == 0, DEADLINE)
        broker.hold_acks(CLIENT)
        sim.car.set_status(battery_12v_v=11.2)  # an update takes the window, never acked
        await until(broker, lambda b: b.held_acks(CLIENT) == 1)
        first = broker.record.connects_of(CLIENT)[-1].connection
        await sim.car.hold(2100)  # the re-send waits for the window
        await until(broker, lambda b: b.record.connects_of(CLIENT)[-1].connection != first)
        broker.resume_acks(CLIENT)  # the new path works
        await sim.backend.wait_for("request", 2, timeout=DEADLINE)
        counters = dict(sim.agent.uplink.counters)

    resent = [r for r in agent_publishes(broker, "request") if r.connection != first]
    assert resent
    assert {json.loads(r.payload)["sequence"] for r in resent} == {2}
    assert all(
        json.loads(r.payload)["sequence"] == 1
        for r in agent_publishes(broker, "request")
        if r.connection == first
    )
    assert request.payload["sequence"] == 1
    assert counters["publish_timeouts"] >= 1


@pytest.mark.asyncio
async def test_a_message_over_the_maximum_packet_size_is_kept_back_and_counted(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory
) -> None:
    """A request (about 1.6 kB) to a broker taking at most 1200 bytes: sending it would end the
    connection (0x95) and every reconnect would send it again. It stays in the outbox, counted
    once; the status and the updates (under 1 kB) still go."""
    async with (
        production(max_packet_size=1200) as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port) as sim,
    ):
        assert sim.agent.uplink.limits.maximum_packet_size == 1200
        sim.agent.update_interval_s = 0.3
        await sim.car.hold(2100)
        await sim.agent.wait_until(
            lambda: sim.agent.uplink.counters.get("publish_oversize") == 1, DEADLINE
        )
        for volts in (11.5, 11.2, 10.9):  # time passes, the uplink is kicked again and again
            sim.car.set_status(battery_12v_v=volts)
            await sim.backend.wait_for(
                "update", len(sim.backend.of_kind("update")) + 1, timeout=DEADLINE
            )
        pending = [e.kind for e in sim.agent.outbox.pending()]
        counters = dict(sim.agent.uplink.counters)
        connects = sim.agent.uplink.connects
        assert sim.agent.uplink.connected
        assert sim.led.mode is LedMode.CALLING

    assert counters["publish_oversize"] == 1  # counted (and logged) once
    assert "request" in pending
    assert connects == 1
    assert broker.record.disconnects_of(CLIENT) == []  # never a 0x95
    assert agent_publishes(broker, "request") == []
    assert all(r.size <= 1200 for r in agent_publishes(broker))
    assert sim.backend.of_kind("request") == []


@pytest.mark.asyncio
@pytest.mark.parametrize("will_delay_s", [7, 0])
async def test_the_will_carries_the_configured_will_delay(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory, will_delay_s: int
) -> None:
    overrides = {"mqtt.will_delay_s": str(will_delay_s)}
    async with (
        production() as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port, overrides=overrides),
    ):
        [connect] = broker.record.connects_of(CLIENT)
    assert connect.will_properties is not None
    delay = property_of(connect.will_properties, Prop.WILL_DELAY_INTERVAL)
    assert delay == (will_delay_s or None)  # 0: no delay, the property left out
    assert user_properties(connect.will_properties) == [SCHEMA]


@pytest.mark.asyncio
async def test_updates_expire_counted_from_their_creation_and_requests_never(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory
) -> None:
    """An update that waited behind a full window (here about 4 s) leaves with that much less
    of its Message Expiry; the request and the status carry none."""
    overrides = {"mqtt.update_expiry_s": "600", "mqtt.publish_timeout_s": "60"}
    async with (
        production(limits=ProductionLimits(receive_maximum=1)) as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port, overrides=overrides) as sim,
    ):
        sim.agent.update_interval_s = 0.3
        await sim.car.hold(2100)
        await sim.backend.wait_for("request", 1, timeout=DEADLINE)
        sim.car.set_status(battery_12v_v=11.4)
        await sim.backend.wait_for("update", 1, timeout=DEADLINE)  # a fresh one

        broker.hold_acks(CLIENT)
        sim.car.set_status(battery_12v_v=11.2)
        await until(broker, lambda b: b.held_acks(CLIENT) == 1)
        sim.car.set_status(battery_12v_v=11.0)
        await sim.agent.wait_until(
            lambda: sum(e.kind == "update" for e in sim.agent.outbox.pending()) >= 2, DEADLINE
        )
        await asyncio.sleep(4)  # not a synchronisation: the queued update grows old
        broker.resume_acks(CLIENT)
        await sim.agent.wait_until(lambda: sim.agent.outbox.count() == 0, DEADLINE)

    updates = agent_publishes(broker, "update")
    assert len(updates) >= 3
    for record in updates:
        created = datetime.fromisoformat(json.loads(record.payload)["sent_at"]).timestamp()
        age = record.wall - created  # the broker's clock against the payload's own time
        expiry = record.prop(Prop.MESSAGE_EXPIRY_INTERVAL)
        assert isinstance(expiry, int)
        assert abs(expiry - (600 - age)) <= 1.5, (expiry, age)
    expiries = [r.prop(Prop.MESSAGE_EXPIRY_INTERVAL) for r in updates]
    assert expiries[0] == 600  # fresh: sent at once
    assert min(e for e in expiries if isinstance(e, int)) <= 596  # queued for 4 s or more
    for kind in ("request", "status"):
        for record in agent_publishes(broker, kind):
            assert record.prop(Prop.MESSAGE_EXPIRY_INTERVAL) is None, kind


@pytest.mark.asyncio
@pytest.mark.parametrize("reason", sorted(BUSY_REASONS))
async def test_a_busy_broker_is_left_alone_for_the_busy_backoff(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory, reason: int
) -> None:
    """The normal backoff is at most 0.1 s here; after a busy CONNACK the next attempt comes
    busy_backoff_s (2 s) x U(0.5, 1.5) later, so never sooner than 1 s."""
    busy_s = 2.0
    overrides = {
        "mqtt.busy_backoff_s": str(busy_s),
        "mqtt.reconnect_min_s": "0.05",
        "mqtt.reconnect_max_s": "0.1",
    }
    async with (
        production() as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port, overrides=overrides) as sim,
    ):
        broker.refuse(reason, CLIENT)
        assert broker.disconnect(CLIENT)
        await until(broker, lambda b: sum(c.reason == reason for c in b.record.connects) >= 4)
        broker.refuse(None, CLIENT)
        await until(broker, lambda b: b.record.connects_of(CLIENT)[-1].reason == 0)
        await sim.agent.wait_until(lambda: sim.agent.uplink.connected, DEADLINE)
        counters = dict(sim.agent.uplink.counters)

    connects = broker.record.connects_of(CLIENT)
    assert connects[0].reason == 0
    refused = [c for c in connects if c.reason == reason]
    assert len(refused) >= 4
    after_refusal = [later.at - earlier.at for earlier, later in itertools.pairwise(connects[1:])]
    assert all(gap >= 0.5 * busy_s for gap in after_refusal), after_refusal
    assert all(gap <= 1.5 * busy_s + 10 for gap in after_refusal), after_refusal  # about it
    assert counters["broker_busy"] == len(connects) - 2  # every refusal but none other


@pytest.mark.asyncio
async def test_a_refusal_that_is_not_busy_keeps_the_normal_backoff(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory
) -> None:
    overrides = {"mqtt.reconnect_min_s": "0.05", "mqtt.reconnect_max_s": "0.1"}
    async with (
        production() as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port, overrides=overrides) as sim,
    ):
        broker.refuse(0x87, CLIENT)  # not authorised: not a reason to stay away long
        assert broker.disconnect(CLIENT)
        await until(broker, lambda b: sum(c.reason == 0x87 for c in b.record.connects) >= 4)
        broker.refuse(None, CLIENT)
        await sim.agent.wait_until(lambda: sim.agent.uplink.connected, DEADLINE)
        counters = dict(sim.agent.uplink.counters)
    assert "broker_busy" not in counters


@pytest.mark.asyncio
async def test_a_press_during_the_busy_backoff_tries_at_once(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory
) -> None:
    """busy_backoff_s 600 s: the next attempt would be 300 s away at least; the call is not."""
    overrides = {"mqtt.busy_backoff_s": "600"}
    async with (
        production() as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port, overrides=overrides) as sim,
    ):
        broker.refuse(0x89, CLIENT)
        assert broker.disconnect(CLIENT)
        await until(broker, lambda b: b.record.connects_of(CLIENT)[-1].reason == 0x89)
        await sim.agent.wait_until(
            lambda: sim.agent.uplink.counters.get("broker_busy") == 1, DEADLINE
        )
        broker.refuse(None, CLIENT)
        await sim.car.hold(2100)
        [request] = await sim.backend.wait_for("request", 1, timeout=60)
    assert request.payload["sequence"] == 1


@pytest.mark.asyncio
async def test_every_json_message_carries_the_schema_version(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory
) -> None:
    async with (
        production() as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port) as sim,
    ):
        sim.agent.update_interval_s = 0.3
        await sim.car.hold(2100)
        await sim.backend.wait_for("request", 1, timeout=DEADLINE)
        sim.car.set_status(battery_12v_v=11.2)
        await sim.backend.wait_for("update", 1, timeout=DEADLINE)
        await sim.car.hold(2100)  # within the cancel window
        await sim.backend.wait_for("cancel", 1, timeout=DEADLINE)
        await sim.led.wait_for(LedMode.READY, timeout=DEADLINE)
    kinds = {kind_of(r) for r in agent_publishes(broker)}
    assert kinds == {"status", "request", "update", "cancel"}  # the offline status included
    assert_schema_everywhere(broker)


@pytest.mark.asyncio
async def test_the_servers_keep_alive_sets_the_ping_interval(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory
) -> None:
    """Asked 30 s, granted 5 s: PINGREQs every 5 s or so (paho >= 2.2), and the broker, which
    drops a client silent for 1.5 x 5 s, keeps the connection."""
    overrides = {"mqtt.keepalive_s": "30"}
    async with (
        production(limits=ProductionLimits(server_keep_alive=5)) as broker,
        Scenario(tmp_path, broker.port, fake_gpsd.port, overrides=overrides) as sim,
    ):
        async with asyncio.timeout(60):  # 3 pings at 5 s; never with the 30 s asked
            await broker.wait_for(lambda b: len(b.record.pings_of(CLIENT)) >= 3)
        granted = sim.agent.uplink.limits.server_keepalive_s
        connects = sim.agent.uplink.connects
    [connect] = broker.record.connects_of(CLIENT)
    assert connect.keep_alive == 30
    assert granted == 5
    assert connects == 1
    pings = broker.record.pings_of(CLIENT)
    assert {p.connection for p in pings} == {connect.connection}
    gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
    assert all(gap < 20 for gap in gaps), gaps  # 5 s or so; never the 30 s asked
    assert broker.record.disconnects_of(CLIENT) == []


@pytest.mark.asyncio
async def test_a_refused_ack_subscription_is_asked_for_again(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory
) -> None:
    """A node that answers SUBSCRIBE with 0x80 (NATS while JetStream moves a session after a
    failover) would leave the car without acks: the driver would never see help coming. The
    agent asks again on the same connection until the broker grants it."""
    async with production() as broker:
        broker.refuse_subscribe(CLIENT, 2)
        async with Scenario(tmp_path, broker.port, fake_gpsd.port) as sim:
            ack = f"assistance/v1/{VIN}/ack"
            await until(broker, lambda b: ack in b.subscriptions(CLIENT))  # the third time
            await sim.car.hold(2100)
            await sim.backend.wait_for("request", 1, timeout=DEADLINE)
            await sim.led.wait_for(LedMode.CONNECTED, timeout=DEADLINE)  # the ack arrived
            refused = sim.agent.uplink.counters.get("subscribe_refused")
            connects = sim.agent.uplink.connects
    assert refused == 2
    assert connects == 1  # on the same connection, not by reconnecting


@pytest.mark.asyncio
async def test_an_ack_subscription_the_node_lost_is_renewed_before_the_repeat(
    tmp_path: Path, fake_gpsd: FakeGpsd, production: BrokerFactory
) -> None:
    """A node can lose a moved session's subscription without telling the client (NATS under
    a mass failover): the backend's ack then goes nowhere, and a repeat alone would meet the
    same void. When no ack comes within ack_timeout_s the agent SUBSCRIBEs again ahead of the
    repeat, so the backend's answer to the repeat reaches the driver."""
    ack = f"assistance/v1/{VIN}/ack"
    async with production() as broker:
        overrides = {"mqtt.ack_timeout_s": "2"}
        async with Scenario(tmp_path, broker.port, fake_gpsd.port, overrides=overrides) as sim:
            await until(broker, lambda b: ack in b.subscriptions(CLIENT))
            assert broker.forget_subscriptions(CLIENT) == 1
            await sim.car.hold(2100)
            await sim.backend.wait_for("request", 1, timeout=DEADLINE)  # answered into the void
            await sim.led.wait_for(LedMode.CONNECTED, timeout=DEADLINE)  # the repeat's answer
            counters = dict(sim.agent.uplink.counters)
            repeats = sim.agent.counters.get("request_repeats")
            connects = sim.agent.uplink.connects
    assert counters.get("resubscribes", 0) >= 1
    assert repeats is not None and repeats >= 1
    assert connects == 1
