"""A fleet of lightweight simulated cars in one asyncio process, for ``make fleet``.

Each :class:`FleetCar` speaks the agent's MQTT contract (SPEC.md §5) over MQTT 3.1.1 and not
much more: client id ``connect-agent-<vin>`` with a persistent session (clean session false), a
retained ``status`` with a Last Will ``offline``, a QoS 1 subscription to its ``ack`` topic,
and now and then a call (a ``request``, later perhaps a ``cancel``, with ``incident_id`` and
``sequence``). It is one coroutine and a socket, not an agent: a thousand of them fit in one
process. Packets come from hw_sim's own codec (:mod:`hw_sim.mqtt_codec`, the embedded
broker's, and :mod:`hw_sim.fleet_wire`), on raw asyncio streams; only the reconnect policy is
the agent's own (:func:`agent.backoff.backoff_delays`, the policy under measurement), and like
the agent a car moves to the next broker of its list after every failure or lost connection.

A request or cancel stays pending until its PUBACK; after a reconnect every pending message is
published again (DUP, same packet id, same ``incident_id`` and ``sequence``), so nothing the
car sent is lost while its broker or cluster node dies. A request PUBACKed but not answered by
an ``ack`` within ``ack_timeout`` (the agent's ``ack_timeout_s``, 30 s) is published again, the
same request, until it is. ``resend=False`` turns the re-sending after a reconnect off (what was
queued while disconnected is still sent once), to show that the fleet's loss check can fail.

A SUBACK with return code 0x80 is not ignored: NATS answers so when it cannot create the
subscription's JetStream consumer within its API timeout (many sessions at once), and then
delivers nothing to that session until a later SUBSCRIBE is granted. The car SUBSCRIBEs again
on the same connection after a backoff (``suback_retry``), and again on every ack timeout
(``revive``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.backoff import backoff_delays
from hw_sim.fleet_wire import (
    ROOT,
    Sent,
    cancel_payload,
    encode_connect,
    encode_subscribe,
    encode_unsubscribe,
    request_payload,
    status_payload,
)
from hw_sim.mqtt_codec import (
    PacketError,
    PacketType,
    decode_ack,
    decode_publish,
    encode_ack,
    encode_packet,
    encode_publish,
    read_packet,
)
from hw_sim.service import Service, cancel_tasks

__all__ = ["Fleet", "FleetCar"]

MAX_PACKET = 1 << 20
PINGREQ = encode_packet(PacketType.PINGREQ, 0, b"")


@dataclass
class _Pending:
    what: Sent
    topic: str
    payload: bytes
    sent_at: float
    written: bool = False  # handed to a connection once (so the next one would re-send it)


@dataclass(eq=False)
class FleetCar:
    """One simulated car: ``await car.run()`` connects and reconnects forever."""

    vin: str
    endpoints: Sequence[tuple[str, int]]
    keep_alive: int = 20
    backoff: tuple[float, float] = (0.5, 30.0)  # the agent's reconnect_min_s, reconnect_max_s
    connack_timeout: float = 30.0
    ack_timeout: float = 30.0  # the agent's ack_timeout_s: no answer by then, the request again
    resend: bool = True
    # What a car does when a request's ack does not come within ack_timeout, before it
    # publishes the request again: "" nothing, "resubscribe" UNSUBSCRIBE and SUBSCRIBE its ack
    # filter again on the open connection, "clean" reconnect once with clean session true and
    # then persistent again (a new broker session, so a new subscription behind it); and
    # "subscribe" (the default) SUBSCRIBE again. Each revived every refused session in
    # bench/fleet_probe; the SUBSCRIBE is the cheapest (no consumer deleted, no reconnect).
    revive: str = "subscribe"
    # A SUBACK with return code 0x80 (NATS: its JetStream consumer not created in time, under
    # load) leaves the session without a subscription: SUBSCRIBE again on the same connection,
    # after the delays of the agent's backoff from suback_retry_s[0] to [1], until granted.
    suback_retry: bool = True
    suback_retry_s: tuple[float, float] = (1.0, 30.0)
    rng: random.Random = field(default_factory=random.Random)
    # observed
    connects: int = 0
    connected_at: float = 0.0  # monotonic time of the last CONNACK
    attempts: list[float] = field(default_factory=list)  # monotonic time of every attempt
    sent: list[Sent] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    pingresps: int = 0
    repeats: int = 0  # requests published again for want of an ack
    revives: int = 0  # times the revive above was done
    subacks: int = 0
    suback_failures: int = 0  # SUBACKs with return code 0x80: the broker refused the filter
    suback_codes: list[int] = field(default_factory=list)
    suback_retries: int = 0  # SUBSCRIBEs sent again after a refusal
    node: int = 0  # index into endpoints: in use, or tried next

    def __post_init__(self) -> None:
        self.client_id = f"connect-agent-{self.vin}"
        self.base = f"{ROOT}/{self.vin}"
        self.connected = asyncio.Event()
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._writer: asyncio.StreamWriter | None = None
        self._open_incident: str | None = None
        self._unanswered: dict[str, bytes] = {}  # incident -> its request, until its ack
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._clean_next = False  # the next CONNECT with clean session true ("clean" revive)
        self._suback_delays: Iterator[float] | None = None  # per connection, after a refusal
        self._suback_timer: asyncio.TimerHandle | None = None

    # -- what a driver does -----------------------------------------------------------------

    def call(self) -> str:
        """Publish a request for a new incident now (or at the next connection)."""
        incident_id = str(uuid.uuid4())
        self._open_incident = incident_id
        payload = request_payload(self.vin, incident_id, 1)
        self._unanswered[incident_id] = payload
        self._publish(Sent("request", incident_id, 1), payload)
        return incident_id

    def cancel(self, incident_id: str) -> None:
        self._open_incident = None
        self._answered(incident_id)
        self._publish(Sent("cancel", incident_id, 1), cancel_payload(incident_id, 1))

    def stop(self) -> None:
        """Forget the timers of requests waiting for their ack (safe twice)."""
        if self._suback_timer is not None:
            self._suback_timer.cancel()
            self._suback_timer = None
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _answered(self, incident_id: str) -> None:
        self._unanswered.pop(incident_id, None)
        timer = self._timers.pop(incident_id, None)
        if timer is not None:
            timer.cancel()

    def _delivered(self, what: Sent) -> None:
        """A request is PUBACKed: publish it again if its ack does not come in time (an ack
        can die with a broker node that held it, as the agent's CallPolicy.repeat knows)."""
        if what.kind != "request" or what.incident_id not in self._unanswered:
            return
        old = self._timers.pop(what.incident_id, None)
        if old is not None:
            old.cancel()
        self._timers[what.incident_id] = asyncio.get_running_loop().call_later(
            self.ack_timeout, self._repeat, what
        )

    def _repeat(self, what: Sent) -> None:
        self._timers.pop(what.incident_id, None)
        payload = self._unanswered.get(what.incident_id)
        if payload is not None:  # same incident_id, sequence, created_at: a duplicate
            self.repeats += 1
            self.revive_delivery()
            self._publish(what, payload, record=False)

    def revive_delivery(self) -> None:
        """The ``revive`` of this car, now (nothing when it is ``""``)."""
        if not self.revive or self._writer is None:
            return
        self.revives += 1
        if self.revive == "subscribe":  # what the car does after every CONNACK anyway
            self._writer.write(encode_subscribe(self._allocate(), f"{self.base}/ack", 1))
        elif self.revive == "resubscribe":
            self._writer.write(encode_unsubscribe(self._allocate(), f"{self.base}/ack"))
            self._writer.write(encode_subscribe(self._allocate(), f"{self.base}/ack", 1))
        elif self.revive == "clean":
            self._clean_next = True
            self._writer.transport.abort()

    @property
    def broker(self) -> tuple[str, int]:
        """The broker in use, or tried next."""
        return self.endpoints[self.node]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def socket(self) -> socket.socket | None:
        if self._writer is None:
            return None
        sock: socket.socket | None = self._writer.get_extra_info("socket")
        return sock

    def _publish(self, what: Sent, payload: bytes, *, record: bool = True) -> None:
        if record:
            self.sent.append(what)
        packet_id = self._allocate()
        entry = _Pending(what, f"{self.base}/{what.kind}", payload, time.monotonic())
        self._pending[packet_id] = entry
        if self._writer is not None:
            self._send(packet_id, entry, dup=False)

    def _allocate(self) -> int:
        while True:
            packet_id, self._next_id = self._next_id, self._next_id % 0xFFFF + 1
            if packet_id not in self._pending:
                return packet_id

    def _send(self, packet_id: int, entry: _Pending, *, dup: bool) -> None:
        if self._writer is not None:
            entry.written = True
            self._writer.write(
                encode_publish(
                    entry.topic, entry.payload, qos=1, retain=False, dup=dup, packet_id=packet_id
                )
            )

    # -- the connection ---------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect with the agent's backoff and jitter: forever."""
        delays = backoff_delays(*self.backoff, self.rng)
        while True:
            try:
                await self._serve_once()
                delays = backoff_delays(*self.backoff, self.rng)  # it worked: start over
            except (OSError, EOFError, PacketError, TimeoutError, ConnectionError):
                pass
            self.node = (self.node + 1) % len(self.endpoints)  # the next node, as the agent
            await asyncio.sleep(next(delays))

    async def _serve_once(self) -> None:
        host, port = self.endpoints[self.node]
        self.attempts.append(time.monotonic())
        writer: asyncio.StreamWriter | None = None
        pinger: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self.connack_timeout):
                reader, writer = await asyncio.open_connection(host, port)
                will = status_payload("offline", None, 0)
                clean, self._clean_next = self._clean_next, False
                writer.write(
                    encode_connect(
                        self.client_id, self.keep_alive, f"{self.base}/status", will, clean=clean
                    )
                )
                kind, _, body = await read_packet(reader, MAX_PACKET)
            if kind != PacketType.CONNACK or len(body) != 2 or body[1] != 0:
                raise ConnectionError(f"refused: {kind} {body.hex()}")
            if clean:  # the broker forgot the session: DISCONNECT, and persistent at once
                writer.write(encode_packet(PacketType.DISCONNECT, 0, b""))
                await writer.drain()
                writer.transport.abort()
                writer = None
                self.node = (self.node - 1) % len(self.endpoints)  # the same node again
                raise ConnectionError("clean session done")
            self._writer = writer
            self.connects += 1
            self.connected_at = time.monotonic()
            self.connected.set()
            writer.write(encode_subscribe(self._allocate(), f"{self.base}/ack", 1))
            status = status_payload("online", self._open_incident, len(self._pending))
            writer.write(
                encode_publish(
                    f"{self.base}/status",
                    status,
                    qos=1,
                    retain=True,
                    packet_id=self._allocate(),
                )
            )
            for packet_id, entry in list(self._pending.items()):
                if not entry.written:  # queued while disconnected: its first sending
                    self._send(packet_id, entry, dup=False)
                elif self.resend:  # written to a connection that died before its PUBACK
                    self._send(packet_id, entry, dup=True)
            pinger = asyncio.create_task(self._ping(writer), name=f"ping {self.vin}")
            await self._read(reader, writer)
        except asyncio.IncompleteReadError as exc:
            raise EOFError("broker closed the connection") from exc
        finally:
            self._writer = None
            self.connected.clear()
            self._suback_delays = None
            if self._suback_timer is not None:
                self._suback_timer.cancel()
                self._suback_timer = None
            if pinger is not None:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger
            if writer is not None:
                writer.transport.abort()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            kind, flags, body = await read_packet(reader, MAX_PACKET)
            if kind == PacketType.PUBACK:
                packet_id, _ = decode_ack(body, 4)
                entry = self._pending.pop(packet_id, None)
                if entry is not None:
                    self._delivered(entry.what)
            elif kind == PacketType.PUBLISH:
                message = decode_publish(flags, body, 4)
                if message.qos:
                    writer.write(encode_ack(PacketType.PUBACK, message.packet_id, 4))
                with contextlib.suppress(ValueError):
                    ack = json.loads(message.payload)
                    self.acks.append(ack)
                    self._answered(str(ack.get("incident_id")))
            elif kind == PacketType.PINGRESP:
                self.pingresps += 1
            elif kind == PacketType.SUBACK:
                self.subacks += 1
                self.suback_failures += body[2:].count(0x80)
                self.suback_codes.extend(body[2:])
                if 0x80 in body[2:] and self.suback_retry:
                    self._subscribe_later(writer)
            # SUBACK and anything else: nothing to do

    def _subscribe_later(self, writer: asyncio.StreamWriter) -> None:
        if self._suback_delays is None:
            # its own draws (from the VIN), so the reconnect backoff draws stay what they were
            self._suback_delays = backoff_delays(*self.suback_retry_s, random.Random(self.vin))
        if self._suback_timer is not None:
            self._suback_timer.cancel()
        self._suback_timer = asyncio.get_running_loop().call_later(
            next(self._suback_delays), self._subscribe_again, writer
        )

    def _subscribe_again(self, writer: asyncio.StreamWriter) -> None:
        self._suback_timer = None
        if self._writer is writer:  # still the connection whose SUBSCRIBE was refused
            self.suback_retries += 1
            writer.write(encode_subscribe(self._allocate(), f"{self.base}/ack", 1))

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        """PINGREQ every keep-alive; no PINGRESP by the next one means a dead link."""
        answered, outstanding = self.pingresps, False
        while True:
            await asyncio.sleep(self.keep_alive)
            if outstanding and self.pingresps == answered:
                writer.transport.abort()
                return
            answered, outstanding = self.pingresps, True
            writer.write(PINGREQ)


class Fleet(Service):
    """``async with Fleet(cars) as fleet:`` runs every car as a named task."""

    def __init__(self, cars: Sequence[FleetCar]) -> None:
        self.cars = list(cars)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(car.run(), name=f"car {car.vin}") for car in self.cars]

    async def aclose(self) -> None:
        """Cancel every car (safe twice); their sockets are aborted, so the Wills fire."""
        tasks, self._tasks = self._tasks, []
        await cancel_tasks(*tasks)
        for car in self.cars:
            car.stop()

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            for car in self.cars:
                await car.connected.wait()

    def sent(self) -> set[Sent]:
        return {what for car in self.cars for what in car.sent}
