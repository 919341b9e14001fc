"""A small embedded MQTT broker (3.1.1 and 5 on one listener), asyncio and standard library only.

It lets ``hw-sim demo`` and the tests run the whole delivery loop where no Mosquitto is
installed. The first half is a pure packet codec (bytes in, values out); the second half is the
broker: sessions, subscriptions, retained messages, wills and keep-alive.

Supported: CONNECT/CONNACK with persistent sessions (clean session / clean start, Session Expiry
Interval, session takeover), PUBLISH QoS 0, 1 and 2 inbound (QoS 2 with PUBREC/PUBREL/PUBCOMP),
QoS 0 and 1 outbound (subscriptions are granted at most QoS 1), retained messages, ``+``/``#``
wildcards, subscription options and identifiers, Last Will (with Will Delay Interval), keep-alive
enforcement, and MQTT 5 properties forwarded intact. Not supported: topic aliases (not
advertised, so a client sending one is disconnected), shared subscriptions, enhanced
authentication, authorisation; any user name and password is accepted.

Payloads are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum

from hw_sim.service import Service

log = logging.getLogger("hw_sim.broker")

MAX_PACKET_SIZE = 1024 * 1024
"""Largest packet (fixed header included) the broker accepts, advertised to MQTT 5 clients."""

NEVER_EXPIRES = 0xFFFFFFFF
_CLOSE_GRACE = 2.0  # seconds clients get to take the DISCONNECT at shutdown
_MAX_VARINT = 268_435_455

# ---------------------------------------------------------------------------------------------
# Packet codec: pure functions and values
# ---------------------------------------------------------------------------------------------


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
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E


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
_PUBLISH_PROPERTIES = frozenset((0x01, 0x02, 0x03, 0x08, 0x09, 0x26))
_FIXED_FLAGS: dict[int, int] = {
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
    if not 0 <= value <= _MAX_VARINT:
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
    return encode_packet(kind, _FIXED_FLAGS.get(kind, 0), body)


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


# ---------------------------------------------------------------------------------------------
# Broker: connections, sessions, routing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Subscription:
    qos: int
    no_local: bool
    retain_as_published: bool
    identifier: int


@dataclass(frozen=True)
class _Delivery:
    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()


@dataclass(eq=False)
class _Session:
    client_id: str
    expiry: int = 0
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    queue: deque[_Delivery] = field(default_factory=deque)
    inflight: dict[int, _Delivery] = field(default_factory=dict)
    incoming_qos2: set[int] = field(default_factory=set)
    connection: _Connection | None = None
    pending_will: Message | None = None
    will_timer: asyncio.TimerHandle | None = None
    expiry_timer: asyncio.TimerHandle | None = None
    next_packet_id: int = 1
    dropped: int = 0

    def allocate_packet_id(self) -> int:
        while True:
            packet_id = self.next_packet_id
            self.next_packet_id = packet_id % 0xFFFF + 1
            if packet_id not in self.inflight:
                return packet_id

    def cancel_timers(self) -> None:
        for timer in (self.will_timer, self.expiry_timer):
            if timer is not None:
                timer.cancel()
        self.will_timer = self.expiry_timer = None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.version = 0
        self.client_id = ""
        self.keep_alive = 0
        self.session: _Session | None = None
        self.will: Message | None = None
        self.will_delay = 0
        self.receive_maximum = 0xFFFF
        self.max_packet_size = _MAX_VARINT
        self.connected = False  # CONNACK accepted the connection
        self.closed = False

    def __repr__(self) -> str:
        return f"<client {self.client_id or '?'} at {self.peer}>"

    def send(self, data: bytes, max_buffer: int) -> None:
        transport = self.writer.transport
        if self.closed or transport.is_closing():
            return
        self.writer.write(data)
        if transport.get_write_buffer_size() > max_buffer:
            log.warning("%r does not read its messages; dropping the connection", self)
            transport.abort()


class EmbeddedBroker(Service):
    """An MQTT 3.1.1 and 5 broker serving on ``host:port`` while the context is entered.

    ``port`` 0 picks a free port; :attr:`port` is the real one once started. ``keep_alive_grace``
    is the multiple of a client's keep-alive after which a silent client is dropped (1.5 in the
    standard; tests may shrink it).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_packet_size: int = MAX_PACKET_SIZE,
        max_queued_messages: int = 1000,
        max_inflight_messages: int = 100,
        keep_alive_grace: float = 1.5,
        connect_timeout: float = 10.0,
        max_write_buffer: int = 16 * 1024 * 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.max_packet_size = max_packet_size
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.keep_alive_grace = keep_alive_grace
        self.connect_timeout = connect_timeout
        self.max_write_buffer = max_write_buffer
        self.retained: dict[str, Message] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("connections", "malformed", "received", "delivered", "dropped"), 0
        )
        self._sessions: dict[str, _Session] = {}
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        self._changed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None or self._closing:
            raise RuntimeError("the broker was already started")
        self._server = await asyncio.start_server(self._handle_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MQTT broker listening on %s:%d", self.host, self.port)

    async def aclose(self) -> None:
        """Close every client connection and the listener; safe to call twice."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            self._drop(conn, Reason.SERVER_SHUTTING_DOWN, will=False)
        # Handlers end on their own once their transport is closed (cancelling them would make
        # asyncio 3.11 log the cancellation); a client that does not read is cut off.
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=_CLOSE_GRACE)
            for conn in list(self._connections):
                conn.writer.transport.abort()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
        for session in self._sessions.values():
            session.cancel_timers()
        self._sessions.clear()
        self._notify()
        log.info("MQTT broker on port %d closed", self.port)

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await asyncio.get_running_loop().create_future()

    # -- introspection --------------------------------------------------------------------------

    @property
    def clients(self) -> frozenset[str]:
        """Client ids with a live connection."""
        return frozenset(s.client_id for s in self._sessions.values() if s.connection)

    @property
    def sessions(self) -> frozenset[str]:
        """Client ids with a session, connected or not."""
        return frozenset(self._sessions)

    def subscriptions(self, client_id: str) -> dict[str, int]:
        """Topic filters of a session and their granted QoS."""
        session = self._sessions.get(client_id)
        return {f: s.qos for f, s in session.subscriptions.items()} if session else {}

    def queued(self, client_id: str) -> int:
        """Messages waiting for, or in flight to, a session."""
        session = self._sessions.get(client_id)
        return len(session.queue) + len(session.inflight) if session else 0

    async def wait_for(self, predicate: Callable[[EmbeddedBroker], bool]) -> None:
        """Wait until ``predicate(broker)`` holds; it is re-checked on every state change.

        Bound it with ``asyncio.timeout``.
        """
        while not predicate(self):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- connection handling --------------------------------------------------------------------

    async def _handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = _Connection(reader, writer)
        self._connections.add(conn)
        self.counters["connections"] += 1
        will = True
        try:
            await self._serve(conn)
        except PacketError as exc:
            self.counters["malformed"] += 1
            log.warning("%r: %s; closing that connection", conn, exc)
            self._drop(conn, exc.reason, will=True)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.debug("%r: connection lost", conn)
        except asyncio.CancelledError:
            will = False
            raise
        except Exception:
            log.exception("%r: internal error; closing that connection", conn)
            self._drop(conn, Reason.UNSPECIFIED_ERROR, will=True)
        finally:
            self._drop(conn, None, will=will)
            self._connections.discard(conn)
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, conn: _Connection) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                kind, _flags, body = await read_packet(conn.reader, self.max_packet_size)
        except TimeoutError:
            log.info("%r sent no CONNECT within %.0f s", conn, self.connect_timeout)
            return
        if kind != PacketType.CONNECT:
            raise PacketError("the first packet is not CONNECT", Reason.PROTOCOL_ERROR)
        if not self._on_connect(conn, body):
            return
        while not conn.closed:
            timeout = conn.keep_alive * self.keep_alive_grace if conn.keep_alive else None
            try:
                async with asyncio.timeout(timeout):
                    kind, flags, body = await read_packet(conn.reader, self.max_packet_size)
            except TimeoutError:
                log.info("%r: keep-alive of %d s expired", conn, conn.keep_alive)
                self._drop(conn, Reason.KEEP_ALIVE_TIMEOUT, will=True)
                return
            self._dispatch(conn, kind, flags, body)
            if not conn.closed:
                await conn.writer.drain()

    def _send(self, conn: _Connection, data: bytes) -> None:
        conn.send(data, self.max_write_buffer)

    def _on_connect(self, conn: _Connection, body: bytes) -> bool:
        try:
            connect = decode_connect(body)
        except UnsupportedProtocolError as exc:
            log.warning("%r: %s; refusing it", conn, exc)
            # The level is unknown, so answer in the 3.1.1 format (0x01: unacceptable version).
            self._send(conn, encode_connack(4, False, 0x01))
            self._drop(conn, None, will=False)
            return False
        conn.version = version = connect.version
        if any(ident == Prop.AUTHENTICATION_METHOD for ident, _ in connect.properties):
            self._refuse(conn, Reason.BAD_AUTHENTICATION_METHOD, 0x05, "enhanced authentication")
            return False
        receive_maximum = get_property(connect.properties, Prop.RECEIVE_MAXIMUM, 0xFFFF)
        max_packet_size = get_property(connect.properties, Prop.MAXIMUM_PACKET_SIZE, _MAX_VARINT)
        if not receive_maximum or not max_packet_size:
            raise PacketError("Receive Maximum or Maximum Packet Size is 0", Reason.PROTOCOL_ERROR)
        client_id, assigned = connect.client_id, False
        if not client_id:
            if version == 4 and not connect.clean_start:
                self._refuse(conn, Reason.CLIENT_IDENTIFIER_NOT_VALID, 0x02, "empty client id")
                return False
            client_id, assigned = f"auto-{uuid.uuid4().hex}", True
        if version == 5:
            expiry = get_property(connect.properties, Prop.SESSION_EXPIRY_INTERVAL, 0)
        else:
            expiry = 0 if connect.clean_start else NEVER_EXPIRES

        old = self._sessions.get(client_id)
        if old is not None and old.connection is not None:
            log.info("%r takes over the session of %r", conn, old.connection)
            self._drop(old.connection, Reason.SESSION_TAKEN_OVER, will=True)
        session = self._sessions.get(client_id)
        if session is not None and connect.clean_start:
            self._end_session(session)
            session = None
        present = session is not None
        if session is None:
            session = self._sessions[client_id] = _Session(client_id)
        session.cancel_timers()
        session.pending_will = None  # a new connection before the will delay: no will
        session.expiry = expiry
        session.connection = conn
        conn.session, conn.client_id = session, client_id
        conn.keep_alive, conn.will_delay = connect.keep_alive, connect.will_delay
        conn.will = replace(connect.will, sender=client_id) if connect.will else None
        conn.receive_maximum, conn.max_packet_size = receive_maximum, max_packet_size
        conn.connected = True

        props: list[tuple[int, PropertyValue]] = [
            (Prop.MAXIMUM_PACKET_SIZE, self.max_packet_size),
            (Prop.SHARED_SUBSCRIPTION_AVAILABLE, 0),
        ]
        if assigned:
            props.append((Prop.ASSIGNED_CLIENT_IDENTIFIER, client_id))
        self._send(conn, encode_connack(version, present, Reason.SUCCESS, tuple(props)))
        log.info("%r connected (MQTT %s, session present %s)", conn, version, present)
        now = time.monotonic()
        for packet_id, delivery in session.inflight.items():
            packet = self._encode_delivery(conn, delivery, packet_id, now, dup=True)
            if packet is not None:
                self._send(conn, packet)
        self._pump(session)
        self._notify()
        return True

    def _refuse(self, conn: _Connection, reason: int, code_v3: int, why: str) -> None:
        """Answer CONNECT with a failure (``reason`` in MQTT 5, ``code_v3`` in 3.1.1) and close."""
        log.warning("%r: refusing the connection: %s", conn, why)
        code = reason if conn.version == 5 else code_v3
        self._send(conn, encode_connack(conn.version, False, code))
        self._drop(conn, None, will=False)

    def _drop(self, conn: _Connection, reason: int | None, *, will: bool) -> None:
        """Close ``conn`` (idempotent); publish its will and end or keep its session."""
        if conn.closed:
            return
        if reason is not None and conn.version == 5 and conn.connected:
            self._send(conn, encode_disconnect(reason))
        conn.closed = True
        conn.writer.close()
        session = conn.session
        if session is None or session.connection is not conn:
            return
        session.connection = None
        self._notify()
        log.info("%r disconnected", conn)
        if self._closing:
            return
        message = conn.will if will else None
        conn.will = None
        if message is not None:
            delay = min(conn.will_delay, session.expiry)
            if delay == 0:
                self._publish_will(message)
            else:
                session.pending_will = message
                session.will_timer = asyncio.get_running_loop().call_later(
                    delay, self._publish_pending_will, session
                )
        if session.expiry == 0:
            self._end_session(session)
        elif session.expiry != NEVER_EXPIRES:
            session.expiry_timer = asyncio.get_running_loop().call_later(
                session.expiry, self._end_session, session
            )

    def _publish_pending_will(self, session: _Session) -> None:
        will, session.pending_will, session.will_timer = session.pending_will, None, None
        if will is not None:
            self._publish_will(will)

    def _publish_will(self, will: Message) -> None:
        log.info("publishing the will of %s on %s", will.sender, will.topic)
        self._publish(replace(will, received_at=time.monotonic()))

    def _end_session(self, session: _Session) -> None:
        session.cancel_timers()
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
        self._publish_pending_will(session)
        log.debug("session of %s ended", session.client_id)
        self._notify()

    # -- packets --------------------------------------------------------------------------------

    def _dispatch(self, conn: _Connection, kind: int, flags: int, body: bytes) -> None:
        session, version = conn.session, conn.version
        if session is None:
            raise RuntimeError("packet dispatched before CONNECT")
        if kind != PacketType.PUBLISH and flags != _FIXED_FLAGS.get(kind, 0):
            raise PacketError(f"invalid fixed-header flags for packet type {kind}")
        if kind == PacketType.PUBLISH:
            self._on_publish(conn, session, decode_publish(flags, body, version))
        elif kind == PacketType.PUBACK:
            packet_id, _ = decode_ack(body, version)
            if session.inflight.pop(packet_id, None) is not None:
                self._pump(session)
                self._notify()
        elif kind == PacketType.PUBREC:
            # The broker never sends QoS 2, so there is nothing to release.
            packet_id, _ = decode_ack(body, version)
            missing = Reason.PACKET_IDENTIFIER_NOT_FOUND
            self._send(conn, encode_ack(PacketType.PUBREL, packet_id, version, missing))
        elif kind == PacketType.PUBREL:
            packet_id, _ = decode_ack(body, version)
            known = packet_id in session.incoming_qos2
            session.incoming_qos2.discard(packet_id)
            reason = Reason.SUCCESS if known else Reason.PACKET_IDENTIFIER_NOT_FOUND
            self._send(conn, encode_ack(PacketType.PUBCOMP, packet_id, version, reason))
        elif kind == PacketType.PUBCOMP:
            decode_ack(body, version)
        elif kind == PacketType.SUBSCRIBE:
            self._on_subscribe(conn, session, decode_subscribe(body, version))
        elif kind == PacketType.UNSUBSCRIBE:
            self._on_unsubscribe(conn, session, *decode_unsubscribe(body, version))
        elif kind == PacketType.PINGREQ:
            if body:
                raise PacketError("PINGREQ with a body")
            self._send(conn, PINGRESP)
        elif kind == PacketType.DISCONNECT:
            self._on_disconnect(conn, session, *decode_disconnect(body, version))
        elif kind == PacketType.CONNECT:
            raise PacketError("second CONNECT", Reason.PROTOCOL_ERROR)
        else:
            raise PacketError(f"unexpected packet type {kind}", Reason.PROTOCOL_ERROR)

    def _on_publish(self, conn: _Connection, session: _Session, packet: Publish) -> None:
        if not valid_topic_name(packet.topic):
            raise PacketError("invalid topic name in PUBLISH", Reason.TOPIC_NAME_INVALID)
        for ident, _ in packet.properties:
            if ident == Prop.TOPIC_ALIAS:
                raise PacketError("topic alias sent (none allowed)", Reason.TOPIC_ALIAS_INVALID)
            if ident not in _PUBLISH_PROPERTIES:
                raise PacketError(f"property 0x{ident:02x} in PUBLISH", Reason.PROTOCOL_ERROR)
        self.counters["received"] += 1
        if packet.qos == 2 and packet.packet_id in session.incoming_qos2:
            self._send(conn, encode_ack(PacketType.PUBREC, packet.packet_id, conn.version))
            return
        message = Message(
            packet.topic,
            packet.payload,
            packet.qos,
            packet.retain,
            packet.properties,
            conn.client_id,
            time.monotonic(),
        )
        matched = self._publish(message)
        reason = Reason.SUCCESS if matched else Reason.NO_MATCHING_SUBSCRIBERS
        if packet.qos == 1:
            self._send(conn, encode_ack(PacketType.PUBACK, packet.packet_id, conn.version, reason))
        elif packet.qos == 2:
            session.incoming_qos2.add(packet.packet_id)
            self._send(conn, encode_ack(PacketType.PUBREC, packet.packet_id, conn.version, reason))

    def _on_subscribe(self, conn: _Connection, session: _Session, packet: Subscribe) -> None:
        identifier = get_property(packet.properties, Prop.SUBSCRIPTION_IDENTIFIER, 0)
        if any(p[0] == Prop.SUBSCRIPTION_IDENTIFIER for p in packet.properties) and not identifier:
            raise PacketError("subscription identifier 0", Reason.PROTOCOL_ERROR)
        reasons: list[int] = []
        now = time.monotonic()
        for request in packet.requests:
            topic_filter = request.topic_filter
            if not valid_topic_filter(topic_filter):
                reasons.append(Reason.TOPIC_FILTER_INVALID if conn.version == 5 else 0x80)
                continue
            if conn.version == 5 and topic_filter.startswith("$share/"):
                reasons.append(Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
                continue
            qos = min(request.qos, 1)
            existed = topic_filter in session.subscriptions
            session.subscriptions[topic_filter] = _Subscription(
                qos, request.no_local, request.retain_as_published, identifier
            )
            reasons.append(qos)
            log.debug("%r subscribed to %s (QoS %d)", conn, topic_filter, qos)
            if request.retain_handling == 2 or (request.retain_handling == 1 and existed):
                continue
            for message in list(self.retained.values()):
                if not topic_matches(topic_filter, message.topic):
                    continue
                if message.expiry_left(now) == 0:
                    del self.retained[message.topic]
                    continue
                ids = (identifier,) if identifier else ()
                self._enqueue(session, _Delivery(message, min(message.qos, qos), True, ids))
        self._send(conn, encode_suback(PacketType.SUBACK, packet.packet_id, conn.version, reasons))
        self._pump(session)
        self._notify()

    def _on_unsubscribe(
        self, conn: _Connection, session: _Session, packet_id: int, filters: list[str]
    ) -> None:
        reasons = []
        for topic_filter in filters:
            found = session.subscriptions.pop(topic_filter, None) is not None
            reasons.append(Reason.SUCCESS if found else Reason.NO_SUBSCRIPTION_EXISTED)
        self._send(conn, encode_suback(PacketType.UNSUBACK, packet_id, conn.version, reasons))
        self._notify()

    def _on_disconnect(
        self, conn: _Connection, session: _Session, reason: int, properties: Properties
    ) -> None:
        expiry = get_property(properties, Prop.SESSION_EXPIRY_INTERVAL, -1)
        if expiry >= 0:
            if session.expiry == 0 and expiry:
                raise PacketError("session expiry set at DISCONNECT", Reason.PROTOCOL_ERROR)
            session.expiry = expiry
        log.debug("%r sent DISCONNECT (reason 0x%02x)", conn, reason)
        self._drop(conn, None, will=reason != Reason.SUCCESS)

    # -- routing --------------------------------------------------------------------------------

    def _publish(self, message: Message) -> int:
        """Store a retained message and route it; return the number of sessions it went to."""
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        matched = 0
        for session in list(self._sessions.values()):
            qos, retain, ids = -1, False, []
            for topic_filter, sub in session.subscriptions.items():
                if sub.no_local and message.sender == session.client_id:
                    continue
                if topic_matches(topic_filter, message.topic):
                    qos = max(qos, sub.qos)
                    retain = retain or (sub.retain_as_published and message.retain)
                    if sub.identifier:
                        ids.append(sub.identifier)
            if qos >= 0:
                matched += 1
                self._enqueue(
                    session, _Delivery(message, min(qos, message.qos), retain, tuple(ids))
                )
                self._pump(session)
        self._notify()
        return matched

    def _enqueue(self, session: _Session, delivery: _Delivery) -> None:
        if session.connection is None and delivery.qos == 0:
            return
        if len(session.queue) >= self.max_queued_messages:
            session.dropped += 1
            self.counters["dropped"] += 1
            if session.dropped == 1:
                log.warning("queue of %s is full; dropping new messages", session.client_id)
            return
        session.queue.append(delivery)

    def _pump(self, session: _Session) -> None:
        """Send queued messages in order while the client's receive window allows."""
        conn = session.connection
        if conn is None or conn.closed:
            return
        window = min(conn.receive_maximum, self.max_inflight_messages)
        now = time.monotonic()
        while session.queue:
            delivery = session.queue[0]
            if delivery.qos and len(session.inflight) >= window:
                return
            session.queue.popleft()
            if delivery.message.expiry_left(now) == 0:
                continue
            packet_id = session.allocate_packet_id() if delivery.qos else 0
            packet = self._encode_delivery(conn, delivery, packet_id, now, dup=False)
            if packet is None:
                continue
            if packet_id:
                session.inflight[packet_id] = delivery
            self.counters["delivered"] += 1
            self._send(conn, packet)

    def _encode_delivery(
        self, conn: _Connection, delivery: _Delivery, packet_id: int, now: float, *, dup: bool
    ) -> bytes | None:
        message = delivery.message
        properties: Properties | None = None
        if conn.version == 5:
            left = message.expiry_left(now)
            properties = tuple(
                (k, left if k == Prop.MESSAGE_EXPIRY_INTERVAL and left is not None else v)
                for k, v in message.properties
            ) + tuple((Prop.SUBSCRIPTION_IDENTIFIER, i) for i in delivery.subscription_ids)
        packet = encode_publish(
            message.topic,
            message.payload,
            qos=delivery.qos,
            retain=delivery.retain,
            dup=dup,
            packet_id=packet_id,
            properties=properties,
        )
        if len(packet) > conn.max_packet_size:
            log.warning("%r: message on %s exceeds its maximum packet size", conn, message.topic)
            return None
        return packet


async def run_broker(host: str, port: int) -> None:
    """Serve an :class:`EmbeddedBroker` on ``host:port`` until cancelled (``hw-sim broker``)."""
    async with EmbeddedBroker(host, port) as broker:
        await broker.serve_forever()
