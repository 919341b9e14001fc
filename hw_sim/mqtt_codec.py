"""MQTT 3.1.1 and 5 packets for the embedded broker: pure functions and values, bytes in and out.

Encoders and decoders for the packets a broker receives (CONNECT, PUBLISH, PUBACK/PUBREC/PUBREL/
PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT) and sends (CONNACK, PUBLISH, the acks,
SUBACK, UNSUBACK, PINGRESP, DISCONNECT), Variable Byte Integers, strings and MQTT 5 properties,
topic names and filters. Every decoder checks bounds and raises :class:`PacketError` (with the
MQTT 5 reason code to answer with) on a malformed packet; none touches a socket, except
:func:`read_packet`, which frames one packet off an ``asyncio.StreamReader``. The broker, its
sessions and routing are in :mod:`hw_sim.broker`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

MAX_VARINT = 268_435_455
"""The largest Variable Byte Integer, so the largest packet MQTT can describe."""


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class Reason(IntEnum):
    """MQTT 5 reason codes the broker sends or acts on."""

    SUCCESS = 0x00
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    QUOTA_EXCEEDED = 0x97
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F


class Prop(IntEnum):
    """MQTT 5 property identifiers."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), _BYTE),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), _U16),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), _U32),
    Prop.SUBSCRIPTION_IDENTIFIER: _VARINT,
    **dict.fromkeys((0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F), _STR),
    **dict.fromkeys((0x09, 0x16), _BIN),
    Prop.USER_PROPERTY: _PAIR,
}
# PUBLISH properties a client may send, all forwarded: payload format, message expiry,
# content type, response topic, correlation data, user properties.
PUBLISH_PROPERTIES = frozenset((0x01, 0x02, 0x03, 0x08, 0x09, 0x26))
FIXED_FLAGS: dict[int, int] = {
    PacketType.PUBREL: 0b0010,
    PacketType.SUBSCRIBE: 0b0010,
    PacketType.UNSUBSCRIBE: 0b0010,
}

PropertyValue = int | str | bytes | tuple[str, str]
Properties = tuple[tuple[int, PropertyValue], ...]
"""MQTT 5 properties in wire order; user properties may repeat and keep their order."""


class PacketError(Exception):
    """A packet is malformed or breaks the protocol; the connection that sent it is closed."""

    def __init__(self, message: str, reason: int = Reason.MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.reason = reason


class UnsupportedProtocolError(PacketError):
    """CONNECT asks for a protocol level other than 4 (3.1.1) or 5."""

    def __init__(self, level: int) -> None:
        super().__init__(f"unsupported protocol level {level}", Reason.UNSUPPORTED_PROTOCOL_VERSION)
        self.level = level


def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (0 .. 268,435,455)."""
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        value, byte = divmod(value, 128)
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Decode a Variable Byte Integer at ``pos``; return it and the position after it."""
    value = 0
    for shift in range(0, 28, 7):
        if pos >= len(data):
            raise PacketError("truncated variable byte integer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise PacketError("variable byte integer longer than 4 bytes")


def encode_string(text: str) -> bytes:
    return encode_binary(text.encode("utf-8"))


def encode_binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("string or binary data longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def encode_properties(properties: Iterable[tuple[int, PropertyValue]]) -> bytes:
    """Encode properties with their Variable Byte Integer length prefix."""
    body = bytearray()
    for ident, value in properties:
        kind = _PROPERTY_TYPES[ident]
        body += encode_varint(ident)
        if isinstance(value, tuple):
            body += encode_string(value[0]) + encode_string(value[1])
        elif isinstance(value, str):
            body += encode_string(value)
        elif isinstance(value, bytes):
            body += encode_binary(value)
        elif kind == _VARINT:
            body += encode_varint(value)
        else:
            body += value.to_bytes({_BYTE: 1, _U16: 2, _U32: 4}[kind], "big")
    return encode_varint(len(body)) + bytes(body)


def encode_packet(kind: int, flags: int, body: bytes) -> bytes:
    """Prefix ``body`` with the fixed header."""
    return bytes([kind << 4 | flags]) + encode_varint(len(body)) + body


class _Reader:
    """Cursor over a packet body; every read checks bounds and raises :class:`PacketError`."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise PacketError("truncated packet")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._pos)

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        value, self._pos = decode_varint(self._data, self._pos)
        return value

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PacketError("invalid UTF-8 string") from None
        if "\x00" in text:
            raise PacketError("UTF-8 string contains U+0000")
        return text

    def properties(self) -> Properties:
        return decode_properties(self.take(self.varint()))

    def end(self) -> None:
        if not self.at_end:
            raise PacketError("unexpected bytes at the end of the packet")


def decode_properties(data: bytes) -> Properties:
    """Decode a property block (without its length prefix)."""
    reader = _Reader(data)
    props: list[tuple[int, PropertyValue]] = []
    seen: set[int] = set()
    while not reader.at_end:
        ident = reader.varint()
        kind = _PROPERTY_TYPES.get(ident)
        if kind is None:
            raise PacketError(f"unknown property 0x{ident:02x}")
        if ident in seen and ident != Prop.USER_PROPERTY:
            raise PacketError(f"property 0x{ident:02x} given twice", Reason.PROTOCOL_ERROR)
        seen.add(ident)
        value: PropertyValue
        if kind == _BYTE:
            value = reader.u8()
        elif kind == _U16:
            value = reader.u16()
        elif kind == _U32:
            value = reader.u32()
        elif kind == _VARINT:
            value = reader.varint()
        elif kind == _STR:
            value = reader.string()
        elif kind == _BIN:
            value = reader.binary()
        else:
            value = (reader.string(), reader.string())
        props.append((ident, value))
    return tuple(props)


def get_property(props: Properties, ident: int, default: int) -> int:
    """The first integer property ``ident`` or ``default``."""
    for key, value in props:
        if key == ident and isinstance(value, int):
            return value
    return default


def valid_topic_name(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic


def valid_topic_filter(topic_filter: str) -> bool:
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (``$`` topics never match a leading wildcard)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    pattern = topic_filter.split("/")
    levels = topic.split("/")
    for i, part in enumerate(pattern):
        if part == "#":
            return True
        if i >= len(levels) or part not in ("+", levels[i]):
            return False
    return len(pattern) == len(levels)


@dataclass(frozen=True)
class Message:
    """An application message as the broker stores and forwards it."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = ()
    sender: str = ""
    received_at: float = 0.0

    def expiry_left(self, now: float) -> int | None:
        """Seconds of Message Expiry Interval left (0 = expired), or None without one."""
        expiry = get_property(self.properties, Prop.MESSAGE_EXPIRY_INTERVAL, -1)
        if expiry < 0:
            return None
        return max(0, math.ceil(expiry - (now - self.received_at)))


@dataclass(frozen=True)
class Connect:
    version: int
    client_id: str
    clean_start: bool
    keep_alive: int
    properties: Properties
    will: Message | None
    will_delay: int
    username: str | None
    password: bytes | None
    will_properties: Properties = ()  # as sent, Will Delay Interval included


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    properties: Properties


@dataclass(frozen=True)
class SubscriptionRequest:
    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(frozen=True)
class Subscribe:
    packet_id: int
    properties: Properties
    requests: tuple[SubscriptionRequest, ...]


def decode_connect(body: bytes) -> Connect:
    reader = _Reader(body)
    name = reader.string()
    level = reader.u8()
    if name != "MQTT" or level not in (4, 5):
        if name in ("MQTT", "MQIsdp"):
            raise UnsupportedProtocolError(level)
        raise PacketError(f"unknown protocol name {name!r}")
    flags = reader.u8()
    if flags & 0x01:
        raise PacketError("reserved CONNECT flag set")
    has_will, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 0x03, bool(flags & 0x20)
    if will_qos == 3 or (not has_will and (will_qos or will_retain)):
        raise PacketError("invalid will flags")
    if level == 4 and flags & 0x40 and not flags & 0x80:
        raise PacketError("password without user name")
    keep_alive = reader.u16()
    properties = reader.properties() if level == 5 else ()
    client_id = reader.string()
    will, will_delay = None, 0
    will_props: Properties = ()
    if has_will:
        will_props = reader.properties() if level == 5 else ()
        topic = reader.string()
        if not valid_topic_name(topic):
            raise PacketError("invalid will topic", Reason.TOPIC_NAME_INVALID)
        payload = reader.binary()
        will_delay = get_property(will_props, Prop.WILL_DELAY_INTERVAL, 0)
        forwarded = tuple(p for p in will_props if p[0] != Prop.WILL_DELAY_INTERVAL)
        will = Message(topic, payload, will_qos, will_retain, forwarded, client_id)
    username = reader.string() if flags & 0x80 else None
    password = reader.binary() if flags & 0x40 else None
    reader.end()
    return Connect(
        level,
        client_id,
        bool(flags & 0x02),
        keep_alive,
        properties,
        will,
        will_delay,
        username,
        password,
        will_props,
    )


def decode_publish(flags: int, body: bytes, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    dup = bool(flags & 0x08)
    if qos == 3:
        raise PacketError("PUBLISH with QoS 3")
    if qos == 0 and dup:
        raise PacketError("PUBLISH with QoS 0 and DUP set")
    reader = _Reader(body)
    topic = reader.string()
    packet_id = reader.u16() if qos else 0
    if qos and not packet_id:
        raise PacketError("PUBLISH with packet identifier 0")
    properties = reader.properties() if version == 5 else ()
    return Publish(topic, reader.rest(), qos, bool(flags & 0x01), dup, packet_id, properties)


def decode_subscribe(body: bytes, version: int) -> Subscribe:
    reader = _Reader(body)
    packet_id = reader.u16()
    properties = reader.properties() if version == 5 else ()
    requests = []
    while not reader.at_end:
        topic_filter = reader.string()
        options = reader.u8()
        qos, handling = options & 0x03, (options >> 4) & 0x03
        reserved = options & (0xC0 if version == 5 else 0xFC)
        if reserved or qos == 3 or handling == 3:
            raise PacketError("invalid subscription options")
        requests.append(
            SubscriptionRequest(
                topic_filter, qos, bool(options & 0x04), bool(options & 0x08), handling
            )
        )
    if not packet_id or not requests:
        raise PacketError("SUBSCRIBE without packet identifier or topic filters")
    return Subscribe(packet_id, properties, tuple(requests))


def decode_unsubscribe(body: bytes, version: int) -> tuple[int, list[str]]:
    reader = _Reader(body)
    packet_id = reader.u16()
    if version == 5:
        reader.properties()
    filters = []
    while not reader.at_end:
        filters.append(reader.string())
    if not packet_id or not filters:
        raise PacketError("UNSUBSCRIBE without packet identifier or topic filters")
    return packet_id, filters


def decode_ack(body: bytes, version: int) -> tuple[int, int]:
    """Packet identifier and reason code of PUBACK, PUBREC, PUBREL or PUBCOMP."""
    reader = _Reader(body)
    packet_id = reader.u16()
    reason: int = Reason.SUCCESS
    if version == 5 and not reader.at_end:
        reason = reader.u8()
        if not reader.at_end:
            reader.properties()
    reader.end()
    return packet_id, reason


def decode_disconnect(body: bytes, version: int) -> tuple[int, Properties]:
    reader = _Reader(body)
    reason: int = Reason.SUCCESS
    properties: Properties = ()
    if version == 5 and not reader.at_end:
        reason = reader.u8()
        if not reader.at_end:
            properties = reader.properties()
    reader.end()
    return reason, properties


def encode_connack(
    version: int, session_present: bool, reason: int, properties: Properties = ()
) -> bytes:
    body = bytes([int(session_present), reason])
    if version == 5:
        body += encode_properties(properties)
    return encode_packet(PacketType.CONNACK, 0, body)


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    dup: bool = False,
    packet_id: int = 0,
    properties: Properties | None = None,
) -> bytes:
    """Encode PUBLISH; ``properties`` None means MQTT 3.1.1 (no property block)."""
    body = encode_string(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    if properties is not None:
        body += encode_properties(properties)
    flags = (0x08 if dup else 0) | qos << 1 | int(retain)
    return encode_packet(PacketType.PUBLISH, flags, body + payload)


def encode_ack(kind: int, packet_id: int, version: int, reason: int = Reason.SUCCESS) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (the reason code is omitted when it is success)."""
    body = packet_id.to_bytes(2, "big")
    if version == 5 and reason != Reason.SUCCESS:
        body += bytes([reason])
    return encode_packet(kind, FIXED_FLAGS.get(kind, 0), body)


def encode_suback(kind: int, packet_id: int, version: int, reasons: Iterable[int]) -> bytes:
    """SUBACK, or UNSUBACK (which has no payload in MQTT 3.1.1)."""
    body = packet_id.to_bytes(2, "big")
    if version == 5:
        body += encode_properties(())
    if version == 5 or kind == PacketType.SUBACK:
        body += bytes(reasons)
    return encode_packet(kind, 0, body)


def encode_disconnect(reason: int) -> bytes:
    """MQTT 5 DISCONNECT from the server."""
    return encode_packet(PacketType.DISCONNECT, 0, bytes([reason]))


PINGRESP = encode_packet(PacketType.PINGRESP, 0, b"")


async def read_packet(reader: asyncio.StreamReader, max_size: int) -> tuple[int, int, bytes]:
    """Read one packet; return its type, its fixed-header flags and its body."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
        if shift == 28:
            raise PacketError("remaining length longer than 4 bytes")
    if 1 + shift // 7 + length > max_size:
        raise PacketError(f"packet of {length} bytes is too large", Reason.PACKET_TOO_LARGE)
    return first >> 4, first & 0x0F, await reader.readexactly(length)
