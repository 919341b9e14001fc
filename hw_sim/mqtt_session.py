"""The embedded broker's state per client: a session and the connection that holds it.

A :class:`Session` outlives its connections (persistent sessions): its subscriptions, the
messages queued for it and those in flight. A :class:`Connection` is one TCP client and what its
CONNECT asked for. :mod:`hw_sim.broker` changes both.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

from hw_sim.mqtt_codec import MAX_VARINT, Message

log = logging.getLogger("hw_sim.broker")  # the broker's logger: one log for the broker


@dataclass(frozen=True)
class Subscription:
    qos: int
    no_local: bool
    retain_as_published: bool
    identifier: int


@dataclass(frozen=True)
class Delivery:
    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()


@dataclass(eq=False)
class Session:
    client_id: str
    expiry: int = 0
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    queue: deque[Delivery] = field(default_factory=deque)
    inflight: dict[int, Delivery] = field(default_factory=dict)
    incoming_qos2: set[int] = field(default_factory=set)
    connection: Connection | None = None
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


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.version = 0
        self.client_id = ""
        self.keep_alive = 0
        self.session: Session | None = None
        self.will: Message | None = None
        self.will_delay = 0
        self.receive_maximum = 0xFFFF
        self.max_packet_size = MAX_VARINT
        self.connected = False  # CONNACK accepted the connection
        self.closed = False
        self.serial = 0  # the broker's number for this connection, in its records
        self.unacked: set[int] = set()  # packet ids received at QoS 1/2, not yet acknowledged
        self.held_acks: deque[tuple[int, bytes]] = deque()  # PUBACKs the broker holds back

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
