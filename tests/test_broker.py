"""The embedded MQTT broker against the real paho-mqtt client, in MQTT 3.1.1 and 5.

paho runs its network thread; its callbacks feed queues that the tests await with a deadline
(``asyncio.to_thread(queue.get, timeout=...)``) so the broker keeps running on the test's loop.
Clients that must misbehave (abrupt close, garbage, silence) are raw sockets speaking bytes
built by hand here, independently of the broker's codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import pytest_asyncio
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hw_sim.broker import EmbeddedBroker, run_broker
from hw_sim.mqtt_codec import (
    PacketError,
    Prop,
    decode_properties,
    decode_publish,
    decode_varint,
    encode_properties,
    encode_varint,
    topic_matches,
    valid_topic_filter,
)

TIMEOUT = 5.0
VERSIONS = [
    pytest.param(MQTTProtocolVersion.MQTTv311, id="v311"),
    pytest.param(MQTTProtocolVersion.MQTTv5, id="v5"),
]
LEVEL = {mqtt.MQTTv311: 4, mqtt.MQTTv5: 5}


class Peer:
    """A paho client on its own network thread; its callbacks land in queues the test awaits."""

    def __init__(
        self,
        port: int,
        version: MQTTProtocolVersion,
        client_id: str = "",
        *,
        clean: bool = True,
        manual_ack: bool = False,
    ) -> None:
        self.port, self.version, self.clean = port, version, clean
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=version,
            clean_session=clean if version == mqtt.MQTTv311 else None,
            reconnect_on_failure=False,  # a test reconnects explicitly
        )
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.started = False
        client = self.client
        client.on_connect = lambda _c, _u, flags, rc, _p: self.events.put(("connect", (flags, rc)))
        client.on_subscribe = lambda _c, _u, _m, codes, _p: self.events.put(("subscribe", codes))
        client.on_publish = lambda _c, _u, _m, rc, _p: self.events.put(("publish", rc))
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self.events.put(("disconnect", rc))
        client.on_message = lambda _c, _u, message: self.messages.put(message)
        client.manual_ack_set(manual_ack)

    async def event(self, kind: str) -> Any:
        name, value = await asyncio.to_thread(self.events.get, timeout=TIMEOUT)
        assert name == kind, (name, value)
        return value

    async def connect(self, *, session_expiry: int = 0) -> bool:
        """Connect; return the session-present flag."""
        if self.version == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
            self.client.connect_async(
                "127.0.0.1", self.port, keepalive=30, clean_start=self.clean, properties=props
            )
        else:
            self.client.connect_async("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        self.started = True
        flags, reason = await self.event("connect")
        assert not reason.is_failure, reason
        return bool(flags.session_present)

    async def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        result, _ = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        return [code.value for code in await self.event("subscribe")]

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish and wait for the PUBACK (QoS 1), PUBCOMP (QoS 2) or the send (QoS 0)."""
        self.client.publish(topic, payload, qos, retain, properties)
        reason = await self.event("publish")
        assert not reason.is_failure, reason

    async def message(self) -> mqtt.MQTTMessage:
        return await asyncio.to_thread(self.messages.get, timeout=TIMEOUT)

    async def close(self) -> None:
        if self.started:
            self.started = False
            self.client.disconnect()
            await asyncio.to_thread(self.client.loop_stop)


@pytest_asyncio.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(keep_alive_grace=0.1) as running:
        yield running


PeerFactory = Callable[..., Peer]


@pytest_asyncio.fixture
async def peer(broker: EmbeddedBroker) -> AsyncIterator[PeerFactory]:
    made: list[Peer] = []

    def make(version: MQTTProtocolVersion, client_id: str = "", **options: Any) -> Peer:
        made.append(Peer(broker.port, version, client_id, **options))
        return made[-1]

    yield make
    for each in made:
        await each.close()


# -- raw clients: bytes built by hand ---------------------------------------------------------


def _str(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def connect_packet(
    level: int,
    client_id: str,
    *,
    keep_alive: int = 30,
    will: tuple[str, bytes] | None = None,
    will_qos: int = 0,
    will_retain: bool = False,
) -> bytes:
    flags = 0x02
    if will:
        flags |= 0x04 | will_qos << 3 | (0x20 if will_retain else 0)
    props = b"\x00" if level == 5 else b""
    body = _str(b"MQTT") + bytes([level, flags]) + struct.pack("!H", keep_alive) + props
    body += _str(client_id.encode())
    if will:
        body += props + _str(will[0].encode()) + _str(will[1])
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


@contextlib.asynccontextmanager
async def raw_client(
    port: int, level: int = 0, client_id: str = "raw", **connect: Any
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP connection; with ``level`` it has sent CONNECT and received a successful CONNACK."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if level:
            writer.write(connect_packet(level, client_id, **connect))
            header = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
            body = await reader.readexactly(header[1])
            assert header[0] == 0x20
            assert body[1] == 0
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), TIMEOUT)


# -- codec --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455])
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded + b"tail") == (value, len(encoded))


def test_varint_rejects_bad_input() -> None:
    with pytest.raises(PacketError):
        decode_varint(b"\xff\xff\xff\xff\x01")
    with pytest.raises(PacketError):
        decode_varint(b"\x80")
    with pytest.raises(ValueError, match="out of range"):
        encode_varint(268_435_456)


def test_properties_round_trip_keeps_order_and_repeats() -> None:
    props = (
        (Prop.CONTENT_TYPE, "application/json"),
        (Prop.USER_PROPERTY, ("a", "1")),
        (Prop.CORRELATION_DATA, b"\x00\x01"),
        (Prop.USER_PROPERTY, ("a", "2")),
        (Prop.MESSAGE_EXPIRY_INTERVAL, 60),
        (Prop.SUBSCRIPTION_IDENTIFIER, 300),
        (Prop.PAYLOAD_FORMAT_INDICATOR, 1),
    )
    encoded = encode_properties(props)
    length, start = decode_varint(encoded)
    assert length == len(encoded) - start
    assert decode_properties(encoded[start:]) == props


def test_malformed_publish_is_rejected() -> None:
    with pytest.raises(PacketError):
        decode_publish(0b0110, b"\x00\x01a\x00\x01", 4)  # QoS 3
    with pytest.raises(PacketError):
        decode_publish(0b0000, b"\x00\x02\xc3\x28", 4)  # invalid UTF-8 topic
    with pytest.raises(PacketError):
        decode_publish(0b0010, b"\x00\x01a\x00\x00", 4)  # packet identifier 0
    with pytest.raises(PacketError):
        decode_publish(0b0000, b"\x00\x01a\x05\x26\x00\x01", 5)  # truncated property


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a//c", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/b/c", False),
    ],
)
def test_topic_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#", "a/b+", "+a"])
def test_invalid_topic_filters(topic_filter: str) -> None:
    assert not valid_topic_filter(topic_filter)


# -- against paho -------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_qos1_publish_subscribe(peer: PeerFactory, version: MQTTProtocolVersion) -> None:
    sub, pub = peer(version, "sub"), peer(version, "pub")
    await sub.connect()
    await pub.connect()
    assert await sub.subscribe("assistance/v1/+/request", qos=2) == [1]
    for n in range(3):
        await pub.publish("assistance/v1/VIN1/request", b"call %d" % n, qos=1)
    received = [await sub.message() for _ in range(3)]
    assert [m.payload for m in received] == [b"call 0", b"call 1", b"call 2"]
    assert {(m.topic, m.qos, m.retain) for m in received} == {
        ("assistance/v1/VIN1/request", 1, False)
    }
    await pub.publish("assistance/v1/VIN1/request", b"qos0", qos=0)
    assert (await sub.message()).qos == 0
    big = bytes(range(256)) * 1200  # 300 kB: a 3-byte remaining length
    await pub.publish("assistance/v1/VIN1/request", big)
    assert (await sub.message()).payload == big


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_qos2_publish_is_completed_and_delivered_at_qos1(
    peer: PeerFactory, version: MQTTProtocolVersion
) -> None:
    sub, pub = peer(version, "sub"), peer(version, "pub")
    await sub.connect()
    await pub.connect()
    assert await sub.subscribe("t", qos=2) == [1]
    await pub.publish("t", b"exactly once", qos=2)  # returns after PUBREC, PUBREL, PUBCOMP
    message = await sub.message()
    assert (message.payload, message.qos) == (b"exactly once", 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_retained_message_reaches_late_subscriber_until_cleared(
    peer: PeerFactory, broker: EmbeddedBroker, version: MQTTProtocolVersion
) -> None:
    pub = peer(version, "pub")
    await pub.connect()
    await pub.publish("car/VIN1/status", b'{"state":"online"}', retain=True)
    late = peer(version, "late")
    await late.connect()
    await late.subscribe("car/+/status")
    message = await late.message()
    assert (message.topic, message.payload, message.retain) == (
        "car/VIN1/status",
        b'{"state":"online"}',
        True,
    )
    await pub.publish("car/VIN1/status", b"", retain=True)
    assert (await late.message()).payload == b""  # the clearing message is forwarded live
    assert "car/VIN1/status" not in broker.retained

    later = peer(version, "later")
    await later.connect()
    await later.subscribe("car/#")
    await pub.publish("car/marker", b"after")
    assert (await later.message()).payload == b"after"  # nothing retained came first


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_wildcards(peer: PeerFactory, version: MQTTProtocolVersion) -> None:
    sub, pub = peer(version, "sub"), peer(version, "pub")
    await sub.connect()
    await pub.connect()
    assert await sub.subscribe("a/+/c") == [1]
    assert await sub.subscribe("x/#") == [1]
    for topic in ("a/b/c", "a/b/d", "a/b/c/d", "x", "y/x", "x/y/z", "a//c"):
        await pub.publish(topic, topic.encode())
    topics = [(await sub.message()).topic for _ in range(4)]
    assert topics == ["a/b/c", "x", "x/y/z", "a//c"]
    assert sub.messages.empty()


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_persistent_session_receives_message_queued_while_offline(
    peer: PeerFactory, broker: EmbeddedBroker, version: MQTTProtocolVersion
) -> None:
    first = peer(version, "connect-agent-VIN1", clean=False)
    assert await first.connect(session_expiry=600) is False
    await first.subscribe("assistance/v1/VIN1/ack")
    await first.close()
    async with asyncio.timeout(TIMEOUT):
        await broker.wait_for(lambda b: "connect-agent-VIN1" not in b.clients)
    assert "connect-agent-VIN1" in broker.sessions

    backend = peer(version, "backend")
    await backend.connect()
    await backend.publish("assistance/v1/VIN1/ack", b'{"status":"received"}')
    await backend.publish("assistance/v1/VIN1/ack", b"qos0 is not queued", qos=0)
    await backend.publish("assistance/v1/VIN1/ack", b'{"status":"assigned"}')
    assert broker.queued("connect-agent-VIN1") == 2

    again = peer(version, "connect-agent-VIN1", clean=False)
    assert await again.connect(session_expiry=600) is True
    payloads = [(await again.message()).payload for _ in range(2)]
    assert payloads == [b'{"status":"received"}', b'{"status":"assigned"}']
    async with asyncio.timeout(TIMEOUT):
        await broker.wait_for(lambda b: b.queued("connect-agent-VIN1") == 0)


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_clean_session_discards_the_old_one(
    peer: PeerFactory, broker: EmbeddedBroker, version: MQTTProtocolVersion
) -> None:
    first = peer(version, "car", clean=False)
    await first.connect(session_expiry=600)
    await first.subscribe("t")
    await first.close()
    async with asyncio.timeout(TIMEOUT):
        await broker.wait_for(lambda b: "car" not in b.clients)
    clean = peer(version, "car", clean=True)
    assert await clean.connect() is False
    assert broker.subscriptions("car") == {}


@pytest.mark.asyncio
async def test_v5_session_with_zero_expiry_ends_at_disconnect(
    peer: PeerFactory, broker: EmbeddedBroker
) -> None:
    brief = peer(MQTTProtocolVersion.MQTTv5, "car", clean=False)
    await brief.connect(session_expiry=0)
    await brief.subscribe("t")
    await brief.close()
    async with asyncio.timeout(TIMEOUT):
        await broker.wait_for(lambda b: "car" not in b.sessions)
    again = peer(MQTTProtocolVersion.MQTTv5, "car", clean=False)
    assert await again.connect(session_expiry=0) is False


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_unacknowledged_message_is_redelivered_with_dup(
    peer: PeerFactory, broker: EmbeddedBroker, version: MQTTProtocolVersion
) -> None:
    forgetful = peer(version, "car", clean=False, manual_ack=True)
    await forgetful.connect(session_expiry=600)
    await forgetful.subscribe("ack")
    backend = peer(version, "backend")
    await backend.connect()
    await backend.publish("ack", b"please ack")
    first = await forgetful.message()
    assert (first.payload, first.dup) == (b"please ack", False)
    await forgetful.close()  # without PUBACK
    async with asyncio.timeout(TIMEOUT):
        await broker.wait_for(lambda b: "car" not in b.clients)
    assert broker.queued("car") == 1

    again = peer(version, "car", clean=False)
    assert await again.connect(session_expiry=600) is True
    redelivered = await again.message()
    assert (redelivered.payload, redelivered.dup, redelivered.qos) == (b"please ack", True, 1)
    async with asyncio.timeout(TIMEOUT):
        await broker.wait_for(lambda b: b.queued("car") == 0)


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_will_is_published_on_abrupt_close(
    peer: PeerFactory, broker: EmbeddedBroker, version: MQTTProtocolVersion
) -> None:
    watcher = peer(version, "backend")
    await watcher.connect()
    await watcher.subscribe("car/+/status")
    will = ("car/VIN1/status", b'{"state":"offline"}')
    options: dict[str, Any] = {"will": will, "will_qos": 1, "will_retain": True}
    async with raw_client(broker.port, LEVEL[version], "car", **options) as (_, writer):
        writer.transport.abort()  # no DISCONNECT
    message = await watcher.message()
    assert (message.topic, message.payload, message.qos) == (*will, 1)
    assert broker.retained["car/VIN1/status"].payload == will[1]


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_normal_disconnect_suppresses_the_will(
    peer: PeerFactory, broker: EmbeddedBroker, version: MQTTProtocolVersion
) -> None:
    watcher = peer(version, "backend")
    await watcher.connect()
    await watcher.subscribe("car/#")
    polite = peer(version, "car")
    polite.client.will_set("car/status", b"offline", qos=1)
    await polite.connect()
    await polite.close()
    async with asyncio.timeout(TIMEOUT):
        await broker.wait_for(lambda b: "car" not in b.clients)
    marker = peer(version, "marker")
    await marker.connect()
    await marker.publish("car/marker", b"m")
    assert (await watcher.message()).topic == "car/marker"


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_keep_alive_timeout_drops_the_client_and_publishes_its_will(
    peer: PeerFactory, broker: EmbeddedBroker, version: MQTTProtocolVersion
) -> None:
    watcher = peer(version, "backend")
    await watcher.connect()
    await watcher.subscribe("car/+/status")
    level = LEVEL[version]
    will = ("car/VIN1/status", b"offline")
    async with raw_client(broker.port, level, "silent", keep_alive=1, will=will) as (reader, _):
        # keep_alive_grace=0.1 in the fixture: dropped after 0.1 s instead of 1.5 s
        rest = await read_to_eof(reader)
    assert rest == (b"\xe0\x01\x8d" if level == 5 else b"")  # v5: DISCONNECT keep-alive timeout
    assert (await watcher.message()).payload == b"offline"


@pytest.mark.asyncio
async def test_v5_properties_are_forwarded_intact_and_dropped_for_v311(
    peer: PeerFactory,
) -> None:
    v5, v311 = peer(mqtt.MQTTv5, "v5"), peer(mqtt.MQTTv311, "v311")
    pub = peer(mqtt.MQTTv5, "car")
    for client in (v5, v311, pub):
        await client.connect()
    await v5.subscribe("assistance/v1/+/request")
    await v311.subscribe("assistance/v1/+/request")
    sent = {
        "ContentType": "application/json",
        "ResponseTopic": "assistance/v1/VIN1/ack",
        "CorrelationData": b"incident-42",
        "PayloadFormatIndicator": 1,
        "MessageExpiryInterval": 3600,
        "UserProperty": [("schema", "assistance-request/1"), ("x", "1"), ("x", "2")],
    }
    props = Properties(PacketTypes.PUBLISH)
    for name, value in sent.items():
        setattr(props, name, value)
    await pub.publish("assistance/v1/VIN1/request", b"{}", properties=props)

    got = (await v5.message()).properties
    assert got is not None
    assert {name: getattr(got, name) for name in sent} == sent  # expiry: nothing waited here
    plain = await v311.message()
    assert plain.payload == b"{}"
    assert plain.properties is None


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_second_connection_with_the_same_id_takes_over(
    peer: PeerFactory, broker: EmbeddedBroker, version: MQTTProtocolVersion
) -> None:
    old = peer(version, "car")
    await old.connect()
    new = peer(version, "car")
    await new.connect()
    reason = await old.event("disconnect")
    await old.close()
    if version == mqtt.MQTTv5:
        assert reason.value == 0x8E
    assert broker.clients == {"car"}
    await new.subscribe("t")
    await new.publish("t", b"still here")
    assert (await new.message()).payload == b"still here"


@pytest.mark.asyncio
@pytest.mark.parametrize("version", VERSIONS)
async def test_garbage_closes_only_that_connection(
    peer: PeerFactory, broker: EmbeddedBroker, version: MQTTProtocolVersion
) -> None:
    sub, pub = peer(version, "sub"), peer(version, "pub")
    await sub.connect()
    await pub.connect()
    await sub.subscribe("t")
    level = LEVEL[version]

    async with raw_client(broker.port) as (reader, writer):
        writer.write(b"\x10\xff\xff\xff\xff\x7f garbage")  # remaining length of 5 bytes
        assert await read_to_eof(reader) == b""
    async with raw_client(broker.port) as (reader, writer):
        writer.write(b"\x30\x05\x00\x09abc")  # PUBLISH before CONNECT
        assert await read_to_eof(reader) == b""
    async with raw_client(broker.port, level, "bad-utf8") as (reader, writer):
        writer.write(b"\x30\x05\x00\x02\xc3\x28x")  # topic is not UTF-8
        assert await read_to_eof(reader) == (b"\xe0\x01\x81" if level == 5 else b"")
    async with raw_client(broker.port, level, "too-big") as (reader, writer):
        writer.write(b"\x30\xff\xff\xff\x7f")  # announces 256 MiB
        assert await read_to_eof(reader) == (b"\xe0\x01\x95" if level == 5 else b"")
    if level == 5:
        async with raw_client(broker.port, level, "alias") as (reader, writer):
            writer.write(b"\x30\x07\x00\x01t\x03\x23\x00\x01")  # topic alias 1
            assert await read_to_eof(reader) == b"\xe0\x01\x94"
    assert broker.counters["malformed"] == (5 if level == 5 else 4)

    await pub.publish("t", b"unharmed")
    assert (await sub.message()).payload == b"unharmed"
    assert broker.clients == {"sub", "pub"}


@pytest.mark.asyncio
async def test_unsupported_protocol_level_is_refused(broker: EmbeddedBroker) -> None:
    async with raw_client(broker.port) as (reader, writer):
        writer.write(b"\x10\x0c\x00\x06MQIsdp\x03\x02\x00\x1e")
        assert await read_to_eof(reader) == b"\x20\x02\x00\x01"


@pytest.mark.asyncio
async def test_teardown_closes_clients_and_is_idempotent() -> None:
    async with EmbeddedBroker() as broker:
        assert broker.host == "127.0.0.1"
        async with raw_client(broker.port, 5, "car") as (reader, _):
            await broker.aclose()
            assert await read_to_eof(reader) == b"\xe0\x01\x8b"  # server shutting down
        await broker.aclose()
    assert broker.clients == frozenset()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", broker.port)


@pytest.mark.asyncio
async def test_run_broker_serves_until_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    listening = asyncio.Event()

    class OnListening(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("MQTT broker listening"):
                listening.set()

    caplog.set_level(logging.INFO, logger="hw_sim.broker")
    handler = OnListening()
    logging.getLogger("hw_sim.broker").addHandler(handler)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(run_broker("127.0.0.1", port))
    try:
        async with asyncio.timeout(TIMEOUT):
            await listening.wait()
        async with raw_client(port, 4, "probe"):
            pass
    finally:
        logging.getLogger("hw_sim.broker").removeHandler(handler)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
