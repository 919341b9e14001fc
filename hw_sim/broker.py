"""A small embedded MQTT broker (3.1.1 and 5 on one listener), asyncio and standard library only.

It lets ``hw-sim demo`` and the tests run the whole delivery loop where no Mosquitto is
installed: connections, sessions, subscriptions, retained messages, wills and keep-alive. The
packets are encoded and decoded in :mod:`hw_sim.mqtt_codec`; the state kept per client is in
:mod:`hw_sim.mqtt_session`.

Scope, frozen: what the agent and its tests use of a broker, and no more. New features go to
Mosquitto, which the tests use wherever it is installed; this broker only gets fixes, and the
one thing Mosquitto cannot do: behave like a production broker tier on demand (issue 18).

Production behaviour, for tests (:mod:`hw_sim.broker_record`): CONNACK grants a Receive
Maximum, a Server Keep Alive and a capped Session Expiry (``limits``); a CONNECT is refused with
a chosen reason code (:meth:`EmbeddedBroker.refuse`, e.g. 0x89 server busy); a client's PUBACKs
are held back and released (:meth:`EmbeddedBroker.hold_acks`), so its in-flight window fills;
and :attr:`EmbeddedBroker.record` keeps every CONNECT (with its Will's properties), PUBLISH
(properties, size, unacknowledged count), PINGREQ and DISCONNECT sent.

Supported: CONNECT/CONNACK with persistent sessions (clean session / clean start, Session Expiry
Interval, session takeover), PUBLISH QoS 0, 1 and 2 inbound (QoS 2 exactly once, with
PUBREC/PUBREL/PUBCOMP), QoS 0 and 1 outbound, retained messages, ``+``/``#`` wildcards,
subscription options (no local, retain as published, retain handling) and identifiers, Last
Will (with Will Delay Interval), keep-alive enforcement, Message Expiry Interval, and MQTT 5
properties forwarded intact.

Limits:

* No QoS 2 towards subscribers: a subscription is granted at most QoS 1 (SUBACK says so), so a
  QoS 2 message goes out at QoS 1, at least once. A PUBREC from a client is answered with
  PUBREL "packet identifier not found".
* No shared subscriptions: CONNACK advertises Shared Subscription Available = 0 and an MQTT 5
  ``$share/...`` filter is refused in SUBACK (0x9E); under 3.1.1 it is an ordinary filter.
* No authentication: the user name and password are read and ignored, so every client is
  accepted; MQTT 5 enhanced authentication (an Authentication Method in CONNECT) is refused
  with 0x8C, and an AUTH packet closes the connection as a protocol error.
* No authorisation: every client may publish and subscribe to every topic.
* No TLS: plain TCP on one listener.
* No topic aliases: none are advertised, so a PUBLISH with one closes the connection (0x94).
* Memory only: sessions and retained messages do not survive the broker. A session queues at
  most ``max_queued_messages`` (further messages are dropped and counted), keeps at most
  ``max_inflight_messages`` unacknowledged (or the client's Receive Maximum, if smaller), and a
  client whose unread output passes ``max_write_buffer`` is cut off. The broker's own Receive
  Maximum is advertised only when ``limits`` sets one, and then counted, not enforced. A packet
  over ``max_packet_size`` (1 MiB, advertised) closes the connection (MQTT 5: DISCONNECT 0x95);
  a message over a client's Maximum Packet Size is skipped for that client.

Payloads are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from hw_sim.broker_record import (
    BrokerRecord,
    ConnectRecord,
    DisconnectRecord,
    PingRecord,
    ProductionLimits,
    PublishRecord,
)
from hw_sim.mqtt_codec import (
    FIXED_FLAGS,
    MAX_VARINT,
    PINGRESP,
    PUBLISH_PROPERTIES,
    Connect,
    Message,
    PacketError,
    PacketType,
    Prop,
    Properties,
    PropertyValue,
    Publish,
    Reason,
    Subscribe,
    UnsupportedProtocolError,
    decode_ack,
    decode_connect,
    decode_disconnect,
    decode_publish,
    decode_subscribe,
    decode_unsubscribe,
    encode_ack,
    encode_connack,
    encode_disconnect,
    encode_publish,
    encode_suback,
    encode_varint,
    get_property,
    read_packet,
    topic_matches,
    valid_topic_filter,
    valid_topic_name,
)
from hw_sim.mqtt_session import Connection, Delivery, Session, Subscription
from hw_sim.service import Service

log = logging.getLogger("hw_sim.broker")

MAX_PACKET_SIZE = 1024 * 1024
"""Largest packet (fixed header included) the broker accepts, advertised to MQTT 5 clients."""

NEVER_EXPIRES = 0xFFFFFFFF
_CLOSE_GRACE = 2.0  # seconds clients get to take the DISCONNECT at shutdown


class EmbeddedBroker(Service):
    """An MQTT 3.1.1 and 5 broker serving on ``host:port`` while the context is entered.

    ``port`` 0 picks a free port; :attr:`port` is the real one once started. ``keep_alive_grace``
    is the multiple of a client's keep-alive after which a silent client is dropped (1.5 in the
    standard; tests may shrink it). ``limits``: what CONNACK grants, as a production broker
    would (see :class:`hw_sim.broker_record.ProductionLimits`); it may be changed while running,
    for the connections that follow.
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
        limits: ProductionLimits | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.max_packet_size = max_packet_size
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.keep_alive_grace = keep_alive_grace
        self.connect_timeout = connect_timeout
        self.max_write_buffer = max_write_buffer
        self.limits = limits or ProductionLimits()
        self.record = BrokerRecord()
        self.retained: dict[str, Message] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "connections",
                "malformed",
                "received",
                "delivered",
                "dropped",
                "refused",
                "receive_maximum_exceeded",
            ),
            0,
        )
        self._refusals: dict[str | None, int] = {}  # client id (None: any) -> CONNACK reason
        self._subscribe_refusals: dict[str, int] = {}  # client id -> SUBSCRIBEs still refused
        self._holding: set[str] = set()  # client ids whose PUBACKs are held back
        self._sessions: dict[str, Session] = {}
        self._connections: set[Connection] = set()
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

    # -- production behaviour on demand ---------------------------------------------------------

    def refuse(self, reason: int | None, client_id: str | None = None) -> None:
        """Answer the next CONNECTs (of ``client_id``, or of anyone) with CONNACK ``reason``
        and close, as a broker shedding load does (0x89, 0x97, 0x9F); None accepts again."""
        if reason is None:
            self._refusals.pop(client_id, None)
        else:
            self._refusals[client_id] = reason

    def refuse_subscribe(self, client_id: str, count: int) -> None:
        """Answer the next ``count`` SUBSCRIBEs of ``client_id`` with SUBACK 0x80 for every
        filter, storing none: what a cluster node does when it cannot create the subscription
        (NATS after a failover)."""
        self._subscribe_refusals[client_id] = count

    def forget_subscriptions(self, client_id: str) -> int:
        """Drop every subscription of ``client_id``'s session without a word to the client:
        what a cluster node does when the consumer behind a moved session is lost (NATS under
        a mass failover). Return how many were dropped."""
        session = self._sessions.get(client_id)
        if session is None:
            return 0
        dropped = len(session.subscriptions)
        session.subscriptions.clear()
        self._notify()
        return dropped

    def disconnect(self, client_id: str, reason: int = Reason.SERVER_SHUTTING_DOWN) -> bool:
        """End ``client_id``'s connection (MQTT 5: DISCONNECT ``reason``), its Will published as
        after any server-side close; False when it is not connected."""
        conn = self._connection_of(client_id)
        if conn is None:
            return False
        self._drop(conn, reason, will=True)
        return True

    def hold_acks(self, client_id: str) -> None:
        """Hold back the PUBACKs of ``client_id``'s QoS 1 messages until released."""
        self._holding.add(client_id)

    def release_acks(self, client_id: str, count: int | None = None) -> int:
        """Send ``count`` (None: all) of the PUBACKs held for ``client_id``, oldest first, and
        go on holding the next ones; return how many were sent."""
        conn = self._connection_of(client_id)
        if conn is None:
            return 0
        sent = 0
        while conn.held_acks and (count is None or sent < count):
            packet_id, packet = conn.held_acks.popleft()
            conn.unacked.discard(packet_id)
            self._send(conn, packet)
            sent += 1
        self._notify()
        return sent

    def resume_acks(self, client_id: str) -> int:
        """Stop holding ``client_id``'s PUBACKs and send those held; return how many."""
        self._holding.discard(client_id)
        return self.release_acks(client_id)

    def held_acks(self, client_id: str) -> int:
        conn = self._connection_of(client_id)
        return len(conn.held_acks) if conn is not None else 0

    def _connection_of(self, client_id: str) -> Connection | None:
        session = self._sessions.get(client_id)
        return session.connection if session is not None else None

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
        conn = Connection(reader, writer)
        self._connections.add(conn)
        self.counters["connections"] += 1
        conn.serial = self.counters["connections"]
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

    async def _serve(self, conn: Connection) -> None:
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
            self._dispatch(conn, kind, flags, body, 1 + len(encode_varint(len(body))) + len(body))
            if not conn.closed:
                await conn.writer.drain()

    def _send(self, conn: Connection, data: bytes) -> None:
        conn.send(data, self.max_write_buffer)

    def _on_connect(self, conn: Connection, body: bytes) -> bool:
        try:
            connect = decode_connect(body)
        except UnsupportedProtocolError as exc:
            log.warning("%r: %s; refusing it", conn, exc)
            # The level is unknown, so answer in the 3.1.1 format (0x01: unacceptable version).
            self._send(conn, encode_connack(4, False, 0x01))
            self._drop(conn, None, will=False)
            return False
        conn.version = version = connect.version
        conn.client_id = connect.client_id
        at = time.monotonic()
        if any(ident == Prop.AUTHENTICATION_METHOD for ident, _ in connect.properties):
            self._record_connect(conn, connect, at, Reason.BAD_AUTHENTICATION_METHOD)
            self._refuse(conn, Reason.BAD_AUTHENTICATION_METHOD, 0x05, "enhanced authentication")
            return False
        refusal = self._refusals.get(connect.client_id, self._refusals.get(None))
        if refusal is not None:
            self.counters["refused"] += 1
            self._record_connect(conn, connect, at, refusal)
            self._refuse(conn, refusal, 0x03, f"told to (reason 0x{refusal:02x})")  # 3.1.1:
            return False  # server unavailable
        receive_maximum = get_property(connect.properties, Prop.RECEIVE_MAXIMUM, 0xFFFF)
        max_packet_size = get_property(connect.properties, Prop.MAXIMUM_PACKET_SIZE, MAX_VARINT)
        if not receive_maximum or not max_packet_size:
            raise PacketError("Receive Maximum or Maximum Packet Size is 0", Reason.PROTOCOL_ERROR)
        client_id, assigned = connect.client_id, False
        if not client_id:
            if version == 4 and not connect.clean_start:
                self._record_connect(conn, connect, at, Reason.CLIENT_IDENTIFIER_NOT_VALID)
                self._refuse(conn, Reason.CLIENT_IDENTIFIER_NOT_VALID, 0x02, "empty client id")
                return False
            client_id, assigned = f"auto-{uuid.uuid4().hex}", True
        asked_expiry = get_property(connect.properties, Prop.SESSION_EXPIRY_INTERVAL, 0)
        if version == 5:
            expiry = self.limits.granted_expiry(asked_expiry)
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
            session = self._sessions[client_id] = Session(client_id)
        session.cancel_timers()
        session.pending_will = None  # a new connection before the will delay: no will
        session.expiry = expiry
        session.connection = conn
        conn.session, conn.client_id = session, client_id
        conn.keep_alive, conn.will_delay = connect.keep_alive, connect.will_delay
        if version == 5 and self.limits.server_keep_alive is not None:
            conn.keep_alive = self.limits.server_keep_alive  # the client must keep to it
        conn.will = replace(connect.will, sender=client_id) if connect.will else None
        conn.receive_maximum, conn.max_packet_size = receive_maximum, max_packet_size
        conn.connected = True

        props: list[tuple[int, PropertyValue]] = [
            (Prop.MAXIMUM_PACKET_SIZE, self.max_packet_size),
            (Prop.SHARED_SUBSCRIPTION_AVAILABLE, 0),
        ]
        if assigned:
            props.append((Prop.ASSIGNED_CLIENT_IDENTIFIER, client_id))
        props += self.limits.connack_properties(asked_expiry)
        self._record_connect(conn, connect, at, Reason.SUCCESS)
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

    def _record_connect(self, conn: Connection, connect: Connect, at: float, reason: int) -> None:
        will = connect.will_properties if connect.will is not None else None
        self.record.connects.append(
            ConnectRecord(
                conn.client_id,
                conn.serial,
                at,
                connect.version,
                connect.keep_alive,
                connect.properties,
                will,
                reason,
            )
        )
        self._notify()

    def _refuse(self, conn: Connection, reason: int, code_v3: int, why: str) -> None:
        """Answer CONNECT with a failure (``reason`` in MQTT 5, ``code_v3`` in 3.1.1) and close."""
        log.warning("%r: refusing the connection: %s", conn, why)
        code = reason if conn.version == 5 else code_v3
        self._send(conn, encode_connack(conn.version, False, code))
        self._drop(conn, None, will=False)

    def _drop(self, conn: Connection, reason: int | None, *, will: bool) -> None:
        """Close ``conn`` (idempotent); publish its will and end or keep its session."""
        if conn.closed:
            return
        if reason is not None and conn.version == 5 and conn.connected:
            self._send(conn, encode_disconnect(reason))
            self.record.disconnects.append(
                DisconnectRecord(conn.client_id, conn.serial, time.monotonic(), reason)
            )
        conn.closed = True
        conn.held_acks.clear()
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

    def _publish_pending_will(self, session: Session) -> None:
        will, session.pending_will, session.will_timer = session.pending_will, None, None
        if will is not None:
            self._publish_will(will)

    def _publish_will(self, will: Message) -> None:
        log.info("publishing the will of %s on %s", will.sender, will.topic)
        self._publish(replace(will, received_at=time.monotonic()))

    def _end_session(self, session: Session) -> None:
        session.cancel_timers()
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
        self._publish_pending_will(session)
        log.debug("session of %s ended", session.client_id)
        self._notify()

    # -- packets --------------------------------------------------------------------------------

    def _dispatch(self, conn: Connection, kind: int, flags: int, body: bytes, size: int) -> None:
        session, version = conn.session, conn.version
        if session is None:
            raise RuntimeError("packet dispatched before CONNECT")
        if kind != PacketType.PUBLISH and flags != FIXED_FLAGS.get(kind, 0):
            raise PacketError(f"invalid fixed-header flags for packet type {kind}")
        if kind == PacketType.PUBLISH:
            self._on_publish(conn, session, decode_publish(flags, body, version), size)
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
            conn.unacked.discard(packet_id)
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
            self.record.pings.append(PingRecord(conn.client_id, conn.serial, time.monotonic()))
            self._send(conn, PINGRESP)
            self._notify()
        elif kind == PacketType.DISCONNECT:
            self._on_disconnect(conn, session, *decode_disconnect(body, version))
        elif kind == PacketType.CONNECT:
            raise PacketError("second CONNECT", Reason.PROTOCOL_ERROR)
        else:
            raise PacketError(f"unexpected packet type {kind}", Reason.PROTOCOL_ERROR)

    def _on_publish(self, conn: Connection, session: Session, packet: Publish, size: int) -> None:
        if not valid_topic_name(packet.topic):
            raise PacketError("invalid topic name in PUBLISH", Reason.TOPIC_NAME_INVALID)
        for ident, _ in packet.properties:
            if ident == Prop.TOPIC_ALIAS:
                raise PacketError("topic alias sent (none allowed)", Reason.TOPIC_ALIAS_INVALID)
            if ident not in PUBLISH_PROPERTIES:
                raise PacketError(f"property 0x{ident:02x} in PUBLISH", Reason.PROTOCOL_ERROR)
        self.counters["received"] += 1
        if packet.qos == 2 and packet.packet_id in session.incoming_qos2:
            self._send(conn, encode_ack(PacketType.PUBREC, packet.packet_id, conn.version))
            return
        self._record_publish(conn, packet, size)
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
            ack = encode_ack(PacketType.PUBACK, packet.packet_id, conn.version, reason)
            if conn.client_id in self._holding:
                conn.held_acks.append((packet.packet_id, ack))
            else:
                conn.unacked.discard(packet.packet_id)
                self._send(conn, ack)
        elif packet.qos == 2:
            session.incoming_qos2.add(packet.packet_id)
            self._send(conn, encode_ack(PacketType.PUBREC, packet.packet_id, conn.version, reason))

    def _record_publish(self, conn: Connection, packet: Publish, size: int) -> None:
        if packet.qos:
            conn.unacked.add(packet.packet_id)
        window = self.limits.receive_maximum
        if window is not None and len(conn.unacked) > window:
            self.counters["receive_maximum_exceeded"] += 1
            log.warning("%r sent more than the Receive Maximum of %d", conn, window)
        self.record.publishes.append(
            PublishRecord(
                conn.client_id,
                conn.serial,
                time.monotonic(),
                time.time(),
                packet.topic,
                packet.payload,
                packet.qos,
                packet.packet_id,
                packet.properties,
                size,
                len(conn.unacked),
            )
        )

    def _on_subscribe(self, conn: Connection, session: Session, packet: Subscribe) -> None:
        identifier = get_property(packet.properties, Prop.SUBSCRIPTION_IDENTIFIER, 0)
        if any(p[0] == Prop.SUBSCRIPTION_IDENTIFIER for p in packet.properties) and not identifier:
            raise PacketError("subscription identifier 0", Reason.PROTOCOL_ERROR)
        reasons: list[int] = []
        now = time.monotonic()
        if self._subscribe_refusals.get(conn.client_id, 0) > 0:
            self._subscribe_refusals[conn.client_id] -= 1
            reasons = [0x80] * len(packet.requests)  # unspecified error / failure (3.1.1)
            log.info("%r: SUBSCRIBE refused", conn)
            self._send(
                conn, encode_suback(PacketType.SUBACK, packet.packet_id, conn.version, reasons)
            )
            self._notify()
            return
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
            session.subscriptions[topic_filter] = Subscription(
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
                self._enqueue(session, Delivery(message, min(message.qos, qos), True, ids))
        self._send(conn, encode_suback(PacketType.SUBACK, packet.packet_id, conn.version, reasons))
        self._pump(session)
        self._notify()

    def _on_unsubscribe(
        self, conn: Connection, session: Session, packet_id: int, filters: list[str]
    ) -> None:
        reasons = []
        for topic_filter in filters:
            found = session.subscriptions.pop(topic_filter, None) is not None
            reasons.append(Reason.SUCCESS if found else Reason.NO_SUBSCRIPTION_EXISTED)
        self._send(conn, encode_suback(PacketType.UNSUBACK, packet_id, conn.version, reasons))
        self._notify()

    def _on_disconnect(
        self, conn: Connection, session: Session, reason: int, properties: Properties
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
                self._enqueue(session, Delivery(message, min(qos, message.qos), retain, tuple(ids)))
                self._pump(session)
        self._notify()
        return matched

    def _enqueue(self, session: Session, delivery: Delivery) -> None:
        if session.connection is None and delivery.qos == 0:
            return
        if len(session.queue) >= self.max_queued_messages:
            session.dropped += 1
            self.counters["dropped"] += 1
            if session.dropped == 1:
                log.warning("queue of %s is full; dropping new messages", session.client_id)
            return
        session.queue.append(delivery)

    def _pump(self, session: Session) -> None:
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
        self, conn: Connection, delivery: Delivery, packet_id: int, now: float, *, dup: bool
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
