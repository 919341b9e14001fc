"""The embedded broker behaving like a production MQTT 5 broker (issue 18), and its codec.

The codec is checked against packets written out by hand from the MQTT 5 specification
(§2.2.2 properties, §3.1 CONNECT, §3.2 CONNACK, §3.3 PUBLISH, §3.14 DISCONNECT); the broker
against raw sockets speaking those bytes, independently of paho and of the broker's encoder.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from hw_sim.broker import EmbeddedBroker
from hw_sim.broker_record import ProductionLimits
from hw_sim.mqtt_codec import (
    Prop,
    Reason,
    decode_connect,
    decode_properties,
    decode_publish,
    encode_connack,
    encode_disconnect,
    encode_properties,
)

TIMEOUT = 10.0

# CONNECT, MQTT 5, client id "car", keep-alive 30 s, clean start 0, Session Expiry 3600 s, a
# Will (QoS 1, retained) on "s" with payload "off" and Will properties Will Delay Interval 30 s
# and the user property schema=1.
CONNECT_WITH_WILL = bytes.fromhex(
    "10 2f"  # CONNECT, remaining length 47
    "0004 4d515454 05"  # "MQTT", level 5
    "2c"  # flags: Will retain 0x20, Will QoS 1 0x08, Will 0x04; clean start 0
    "001e"  # keep-alive 30
    "05 11 00000e10"  # properties (5 bytes): Session Expiry Interval 3600
    "0003 636172"  # client id "car"
    "11 18 0000001e 26 0006 736368656d61 0001 31"  # Will properties (17 bytes)
    "0001 73"  # Will topic "s"
    "0003 6f6666"  # Will payload "off"
)
# PUBLISH, QoS 1, topic "u", packet id 7, Message Expiry Interval 600 s, schema=1, payload {}
PUBLISH_WITH_EXPIRY = bytes.fromhex(
    "32 19 0001 75 0007 11 02 00000258 26 0006 736368656d61 0001 31 7b7d"
)


def connect_bytes(client_id: bytes, keep_alive: int = 30, expiry: int = 3600) -> bytes:
    """A minimal MQTT 5 CONNECT (clean start 0, Session Expiry ``expiry``), by hand."""
    body = (
        b"\x00\x04MQTT\x05\x00"
        + keep_alive.to_bytes(2, "big")
        + b"\x05\x11"
        + expiry.to_bytes(4, "big")
        + len(client_id).to_bytes(2, "big")
        + client_id
    )
    return bytes([0x10, len(body)]) + body


# -- codec: hand-written bytes ------------------------------------------------------------------


def test_connack_with_production_limits_matches_the_spec_bytes() -> None:
    props = (
        (Prop.RECEIVE_MAXIMUM, 1),
        (Prop.MAXIMUM_PACKET_SIZE, 2048),
        (Prop.SERVER_KEEP_ALIVE, 5),
        (Prop.SESSION_EXPIRY_INTERVAL, 60),
    )
    assert encode_connack(5, False, 0, props) == bytes.fromhex(
        "20 13 00 00 10 2100 01 27 00000800 13 0005 11 0000003c"
    )


@pytest.mark.parametrize("reason", [0x89, 0x97, 0x9F])
def test_refusing_connack_in_mqtt5_and_311(reason: int) -> None:
    assert encode_connack(5, False, reason) == bytes([0x20, 0x03, 0x00, reason, 0x00])
    assert encode_connack(4, False, 0x03) == b"\x20\x02\x00\x03"  # 3.1.1: server unavailable


def test_busy_reason_codes_are_named() -> None:
    assert (Reason.SERVER_BUSY, Reason.QUOTA_EXCEEDED, Reason.CONNECTION_RATE_EXCEEDED) == (
        0x89,
        0x97,
        0x9F,
    )
    assert Reason.RECEIVE_MAXIMUM_EXCEEDED == 0x93
    assert encode_disconnect(Reason.PACKET_TOO_LARGE) == b"\xe0\x01\x95"


def test_connect_keeps_the_wills_properties_with_its_delay() -> None:
    connect = decode_connect(CONNECT_WITH_WILL[2:])
    assert connect.client_id == "car"
    assert not connect.clean_start
    assert connect.keep_alive == 30
    assert connect.properties == ((Prop.SESSION_EXPIRY_INTERVAL, 3600),)
    assert connect.will_delay == 30
    assert connect.will_properties == (
        (Prop.WILL_DELAY_INTERVAL, 30),
        (Prop.USER_PROPERTY, ("schema", "1")),
    )
    assert connect.will is not None
    assert (connect.will.topic, connect.will.payload, connect.will.qos) == ("s", b"off", 1)
    assert connect.will.retain
    assert connect.will.properties == ((Prop.USER_PROPERTY, ("schema", "1")),)  # forwarded


def test_publish_message_expiry_and_user_property() -> None:
    publish = decode_publish(PUBLISH_WITH_EXPIRY[0] & 0x0F, PUBLISH_WITH_EXPIRY[2:], 5)
    assert (publish.topic, publish.qos, publish.packet_id) == ("u", 1, 7)
    assert publish.properties == (
        (Prop.MESSAGE_EXPIRY_INTERVAL, 600),
        (Prop.USER_PROPERTY, ("schema", "1")),
    )
    assert publish.payload == b"{}"
    assert encode_properties(publish.properties) == PUBLISH_WITH_EXPIRY[7:-2]


def test_limit_properties_round_trip() -> None:
    raw = bytes.fromhex("21ffff 2700100000 13001e 11ffffffff")
    assert decode_properties(raw) == (
        (Prop.RECEIVE_MAXIMUM, 65535),
        (Prop.MAXIMUM_PACKET_SIZE, 1048576),
        (Prop.SERVER_KEEP_ALIVE, 30),
        (Prop.SESSION_EXPIRY_INTERVAL, 0xFFFFFFFF),
    )
    assert encode_properties(decode_properties(raw)) == bytes([len(raw)]) + raw


# -- the broker, through raw sockets ------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """One whole packet (remaining length under 128 here)."""
    header = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    assert header[1] < 128
    return header + await asyncio.wait_for(reader.readexactly(header[1]), TIMEOUT)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), TIMEOUT)


@pytest.mark.asyncio
async def test_connack_grants_the_configured_limits_and_caps_the_session_expiry() -> None:
    limits = ProductionLimits(receive_maximum=1, server_keep_alive=5, max_session_expiry=60)
    async with EmbeddedBroker(limits=limits) as broker, raw(broker.port) as (reader, writer):
        writer.write(connect_bytes(b"car", keep_alive=30, expiry=3600))
        assert await read_packet(reader) == bytes.fromhex(
            "20 15 00 00 12"
            "27 00100000 2a 00"  # Maximum Packet Size 1 MiB, no shared subscriptions
            "21 0001 13 0005 11 0000003c"  # Receive Maximum 1, keep-alive 5, expiry 60
        )
        [record] = broker.record.connects
    assert (record.client_id, record.keep_alive, record.reason) == ("car", 30, 0)
    assert record.properties == ((Prop.SESSION_EXPIRY_INTERVAL, 3600),)
    assert record.will_properties is None


@pytest.mark.asyncio
async def test_an_expiry_within_the_cap_is_not_named_in_connack() -> None:
    async with (
        EmbeddedBroker(limits=ProductionLimits(max_session_expiry=60)) as broker,
        raw(broker.port) as (reader, writer),
    ):
        writer.write(connect_bytes(b"car", expiry=60))
        assert await read_packet(reader) == bytes.fromhex("20 0a 00 00 07 27 00100000 2a 00")


@pytest.mark.asyncio
@pytest.mark.parametrize("reason", [0x89, 0x97, 0x9F])
async def test_a_refused_connect_is_answered_with_the_reason_and_recorded(reason: int) -> None:
    async with EmbeddedBroker() as broker:
        broker.refuse(reason)
        async with raw(broker.port) as (reader, writer):
            writer.write(CONNECT_WITH_WILL)
            assert await read_to_eof(reader) == bytes([0x20, 0x03, 0x00, reason, 0x00])
        assert broker.sessions == frozenset()  # a refused CONNECT leaves no session behind
        broker.refuse(None)
        async with raw(broker.port) as (reader, writer):
            writer.write(CONNECT_WITH_WILL)
            assert (await read_packet(reader))[:4] == b"\x20\x0a\x00\x00"  # accepted
        refused, accepted = broker.record.connects
        assert broker.counters["refused"] == 1
    assert (refused.reason, accepted.reason) == (reason, 0)
    assert refused.at <= accepted.at
    assert refused.will_properties == (
        (Prop.WILL_DELAY_INTERVAL, 30),
        (Prop.USER_PROPERTY, ("schema", "1")),
    )


@pytest.mark.asyncio
async def test_refusing_one_client_leaves_the_others_alone() -> None:
    async with EmbeddedBroker() as broker:
        broker.refuse(0x89, "car")
        async with raw(broker.port) as (reader, writer):
            writer.write(connect_bytes(b"car"))
            assert await read_to_eof(reader) == b"\x20\x03\x00\x89\x00"
        async with raw(broker.port) as (reader, writer):
            writer.write(connect_bytes(b"backend"))
            assert (await read_packet(reader))[3] == 0x00


@pytest.mark.asyncio
async def test_held_pubacks_fill_the_window_until_released() -> None:
    async with (
        EmbeddedBroker(limits=ProductionLimits(receive_maximum=1)) as broker,
        raw(broker.port) as (reader, writer),
    ):
        writer.write(connect_bytes(b"car"))
        await read_packet(reader)
        broker.hold_acks("car")
        writer.write(PUBLISH_WITH_EXPIRY)
        writer.write(PUBLISH_WITH_EXPIRY.replace(b"\x00\x07", b"\x00\x08", 1))
        async with asyncio.timeout(TIMEOUT):
            await broker.wait_for(lambda b: b.held_acks("car") == 2)
        assert broker.counters["receive_maximum_exceeded"] == 1  # counted, not enforced
        assert [(p.packet_id, p.unacked) for p in broker.record.publishes] == [(7, 1), (8, 2)]

        assert broker.release_acks("car", 1) == 1
        assert await read_packet(reader) == b"\x40\x03\x00\x07\x10"  # no matching subscribers
        assert broker.held_acks("car") == 1
        writer.write(PUBLISH_WITH_EXPIRY.replace(b"\x00\x07", b"\x00\x09", 1))  # still held
        async with asyncio.timeout(TIMEOUT):
            await broker.wait_for(lambda b: b.held_acks("car") == 2)
        assert broker.record.publishes[-1].unacked == 2

        assert broker.resume_acks("car") == 2
        assert await read_packet(reader) == b"\x40\x03\x00\x08\x10"
        assert await read_packet(reader) == b"\x40\x03\x00\x09\x10"
        writer.write(PUBLISH_WITH_EXPIRY.replace(b"\x00\x07", b"\x00\x0a", 1))
        assert await read_packet(reader) == b"\x40\x03\x00\x0a\x10"  # acked at once again
    assert broker.record.publishes[-1].unacked == 1


@pytest.mark.asyncio
async def test_each_publish_is_recorded_with_its_properties_and_size() -> None:
    async with EmbeddedBroker() as broker, raw(broker.port) as (reader, writer):
        writer.write(connect_bytes(b"car"))
        await read_packet(reader)
        writer.write(PUBLISH_WITH_EXPIRY)
        await read_packet(reader)
        [record] = broker.record.publishes_of("car")
    assert record.size == len(PUBLISH_WITH_EXPIRY)
    assert (record.topic, record.payload, record.qos) == ("u", b"{}", 1)
    assert record.prop(Prop.MESSAGE_EXPIRY_INTERVAL) == 600
    assert record.user_properties == [("schema", "1")]
    assert record.connection == broker.record.connects[0].connection


@pytest.mark.asyncio
async def test_an_oversize_packet_ends_the_connection_with_0x95() -> None:
    async with EmbeddedBroker(max_packet_size=64) as broker, raw(broker.port) as (reader, writer):
        writer.write(connect_bytes(b"car"))
        assert (await read_packet(reader))[5:10] == b"\x27\x00\x00\x00\x40"  # 64 advertised
        body = b"\x00\x01t\x00\x01\x00" + b"x" * 60  # 66 bytes: 68 with the fixed header
        writer.write(bytes([0x32, len(body)]) + body)
        assert await read_to_eof(reader) == b"\xe0\x01\x95"
        [disconnect] = broker.record.disconnects_of("car")
    assert disconnect.reason == 0x95
    assert broker.record.publishes_of("car") == []


@pytest.mark.asyncio
async def test_server_keep_alive_is_enforced_and_pings_are_recorded() -> None:
    limits = ProductionLimits(server_keep_alive=1)
    async with (
        EmbeddedBroker(limits=limits, keep_alive_grace=1.5) as broker,
        raw(broker.port) as (reader, writer),
    ):
        writer.write(connect_bytes(b"car", keep_alive=60))
        await read_packet(reader)
        writer.write(b"\xc0\x00")  # PINGREQ
        assert await read_packet(reader) == b"\xd0\x00"
        # then silent: the broker keeps to the keep-alive it granted (1 s), not the 60 s asked
        assert await read_to_eof(reader) == b"\xe0\x01\x8d"
        [ping] = broker.record.pings_of("car")
    assert ping.connection == broker.record.connects[0].connection
