"""MQTT uplink through paho-mqtt, driven by the asyncio event loop (no paho thread).

paho does the protocol; :mod:`agent.paho_loop` moves its bytes on the event loop, as aiomqtt
does. Every connection attempt uses a fresh paho client, and the outbox is the one
source of truth for what still has to go out: after each CONNACK every pending message is
published again (QoS 1 allows the duplicate; it carries the same incident id and sequence).

Persistent session (MQTT 5 clean_start=False with a session expiry, or 3.1.1
clean_session=False), Last Will with a retained ``offline`` status (MQTT 5: after a Will
Delay), keep-alive at most 30 s, reconnects with capped exponential backoff and full jitter,
never giving up. ``mqtt.host`` may list several brokers or cluster nodes: each failure moves
to the next. What an MQTT 5 broker grants in its CONNACK (in-flight window, largest packet,
session expiry, keep-alive) is honoured (:mod:`agent.broker_limits`); a CONNACK that says
busy, over quota or over the connection rate means a long backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import backoff_delays
from agent.broker_limits import BUSY_REASONS, BrokerLimits, publish_size
from agent.config import MqttConfig
from agent.core.wallclock import Reading
from agent.errors import UplinkError
from agent.outbox import Entry, Outbox
from agent.paho_loop import PahoOnLoop
from agent.schemas import SCHEMA_VERSION
from agent.uplink_tls import UplinkTls

log = logging.getLogger("agent.uplink")

CONNACK_TIMEOUT_S = 10.0
URGENT = ("request", "cancel")  # what the driver is waiting for
FIRST_LOSS_PROBE_S = 0.02  # the first PINGREQ after a request: its own segment, right behind
SUBSCRIBE_RETRY_S = (1.0, 30.0)  # a refused ack subscription is asked for again: first, most


class BrokerBusy(UplinkError):
    """The CONNACK said server busy, quota exceeded or connection rate exceeded."""


class UplinkEvents(Protocol):
    def on_delivered(self, entry: Entry) -> None: ...
    def on_ack(self, payload: bytes) -> None: ...
    def on_connection(self, connected: bool) -> None: ...


class Topics:
    def __init__(self, root: str, vin: str) -> None:
        base = f"{root}/{vin}"
        self.request = f"{base}/request"
        self.cancel = f"{base}/cancel"
        self.update = f"{base}/update"
        self.ack = f"{base}/ack"
        self.status = f"{base}/status"

    def for_kind(self, kind: str) -> str:
        topic: str = getattr(self, kind)
        return topic


class Uplink:
    def __init__(
        self,
        cfg: MqttConfig,
        vin: str,
        outbox: Outbox,
        events: UplinkEvents,
        status: Callable[[str], dict[str, Any]],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], Reading] | None = None,
    ) -> None:
        self.cfg = cfg
        self.publish_timeout_s = cfg.publish_timeout_s  # no PUBACK by then: the path is dead
        self.loss_probe_s = cfg.loss_probe_s  # 0: off
        self.vin = vin
        self.topics = Topics(cfg.topic_root, vin)
        self.outbox = outbox
        self.events = events
        self._status = status
        self._rng = rng or random.Random()
        self._client: mqtt.Client | None = None
        self._connected = False
        self._inflight: dict[int, Entry] = {}  # paho mid -> entry, for this connection only
        # the (kind, incident_id, sequence) published on this connection: a key, never a row
        # id, which a replaced outbox file gives out again
        self._sent: set[tuple[str, str, int]] = set()
        self._disconnected: asyncio.Future[None] | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io: PahoOnLoop | None = None  # the current client's I/O on the loop
        self._probing: mqtt.Client | None = None  # the connection a loss-probe chain runs on
        self._closing = False  # aclose() asked for the disconnect
        self._urgent = False  # the last connection died under a call: reconnect at once
        self._last_error: str | None = None  # paho's last error line on this connection
        self._waiters: dict[int, asyncio.Future[None]] = {}  # status mid -> its PUBACK
        self._status_mids: set[int] = set()  # status messages awaiting their PUBACK
        self._status_due = False  # a status waits for room in the broker's window
        self._starved = False  # pending messages wait for room in the broker's window
        self._urgent_waiting = False  # among them a request or cancel: the status goes after
        self._wake = asyncio.Event()  # something urgent to send while disconnected
        self._subscribe_retry_s = SUBSCRIBE_RETRY_S[0]
        self.connects = 0
        self.attempts = 0
        self.counters: dict[str, int] = {}
        self._endpoints = cfg.endpoints()
        self._node = 0  # the index in _endpoints of the broker in use or tried next
        self.limits = BrokerLimits()  # what the current connection's CONNACK granted
        self._oversize: set[tuple[str, str, int]] = set()  # logged once each
        self._tls = UplinkTls(cfg, self.counters, clock)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def broker(self) -> str:
        """``host:port`` of the broker in use (or tried next): the status's ``broker``."""
        host, port = self._endpoints[self._node]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _next_broker(self) -> None:
        self._node = (self._node + 1) % len(self._endpoints)

    # -- public operations ------------------------------------------------------------------

    def kick(self, urgent: bool = False) -> None:
        """Publish every pending outbox message not yet sent on this connection.

        ``urgent`` (a press): while disconnected, try to connect now, not after the backoff.
        """
        client = self._client
        if client is None or not self._connected:
            if urgent:
                self._wake.set()
            return
        pending = self.outbox.pending()
        pending.sort(key=lambda e: e.kind not in URGENT)  # what the driver waits for first
        self._urgent_waiting = False
        for entry in pending:
            if entry.key in self._sent:
                continue
            if self._window_full():
                self._starved = True  # the broker's Receive Maximum: the rest follows PUBACKs
                self._urgent_waiting = entry.kind in URGENT
                if entry.kind in URGENT and self._loop is not None:  # a dead link must not
                    self._loop.call_later(  # hold it behind the window: the same deadline
                        self.publish_timeout_s, self._window_deadline, client, entry.key
                    )
                break
            props = self._properties(entry)
            if not self.limits.fits(publish_size(entry.topic, entry.payload, props)):
                self._too_large(entry)
                continue
            info = client.publish(entry.topic, entry.payload, qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning(
                    "publish of %s %s/%d failed: rc=%d",
                    entry.kind,
                    entry.incident_id,
                    entry.sequence,
                    info.rc,
                )
                break
            self._inflight[info.mid] = entry
            self._sent.add(entry.key)
            if entry.kind in URGENT and self._loop is not None:
                self._loop.call_later(self.publish_timeout_s, self._deadline, client, info.mid)
                self._arm_loss_probe(client)
        self._flush()

    def _arm_loss_probe(self, client: mqtt.Client) -> None:
        """Start the loss probes on this connection, unless they run on it already.

        A request lost on a lossy link waits for the kernel's retransmission timeout, which on
        a thin stream (a packet every few seconds, few round-trip samples) is far above the
        round trip: 1.2-1.5 s at 400 ms RTT with 20 % loss (bench.links_kernel). A segment
        written after the request that does arrive is acknowledged selectively, and the kernel
        (RACK) then resends the request after about one round trip. So while a request or
        cancel waits for its PUBACK, the agent writes a 2-byte PINGREQ 20 ms after it and then
        every ``mqtt.loss_probe_s``; the PUBACK, a reconnection or the deadline ends them.
        """
        if self.loss_probe_s <= 0 or self._loop is None or self._probing is client:
            return
        self._probing = client
        self._loop.call_later(FIRST_LOSS_PROBE_S, self._loss_probe, client)

    def _loss_probe(self, client: mqtt.Client) -> None:
        if self._probing is not client:
            return  # a chain on a newer connection took over
        waiting = any(e.kind in URGENT for e in self._inflight.values())
        if client is not self._client or not self._connected or not waiting or self._io is None:
            self._probing = None
            return
        if not self._io.ping():
            self._probing = None
            return
        self.counters["loss_probes"] = self.counters.get("loss_probes", 0) + 1
        if self._loop is not None:
            self._loop.call_later(self.loss_probe_s, self._loss_probe, client)

    def _window_full(self) -> bool:
        return len(self._inflight) + len(self._status_mids) >= self.limits.inflight

    def _window_deadline(self, client: mqtt.Client, key: tuple[str, str, int]) -> None:
        """A request or cancel still waits for room in the window: the link is dead."""
        if client is not self._client or key in self._sent or not self._window_full():
            return
        self.counters["publish_timeouts"] = self.counters.get("publish_timeouts", 0) + 1
        log.warning("no PUBACK made room for %s %s/%d: reconnecting", *key)
        self._urgent = True
        self._lost()

    def _too_large(self, entry: Entry) -> None:
        """Larger than the broker's Maximum Packet Size: it would end the connection, so it
        stays in the outbox (another broker may take it) and is counted, logged once."""
        if entry.key in self._oversize:
            return
        self._oversize.add(entry.key)
        self.counters["publish_oversize"] = self.counters.get("publish_oversize", 0) + 1
        log.error(
            "%s %s/%d is larger than the broker's maximum packet size (%s bytes): not sent",
            entry.kind,
            entry.incident_id,
            entry.sequence,
            self.limits.maximum_packet_size,
        )

    def _deadline(self, client: mqtt.Client, mid: int) -> None:
        """No PUBACK within ``publish_timeout_s``: drop this connection and connect again.

        On a path that died silently (a NAT mapping gone, the cell lost) TCP reports nothing
        and MQTT's keep-alive notices only after 1.5 x keepalive_s; the call cannot wait that
        long. The message stays in the outbox and goes out again on the next connection.
        """
        entry = self._inflight.get(mid)
        if client is not self._client or entry is None:
            return
        self.counters["publish_timeouts"] = self.counters.get("publish_timeouts", 0) + 1
        log.warning(
            "no PUBACK for %s %s/%d within %.1f s: the connection is dead, reconnecting",
            entry.kind,
            entry.incident_id,
            entry.sequence,
            self.publish_timeout_s,
        )
        self._urgent = True
        self._lost()

    def publish_status(self) -> None:
        client = self._client
        if client is None or not self._connected or self._closing:
            return  # once closing, the offline status is the last word (no Last Will follows)
        if self._window_full() or self._urgent_waiting:
            # sent when a PUBACK makes room, after a request or cancel waiting for it (a
            # delivery publishes a status at once, before the refill: it must not take the room)
            self._status_due = True
            return
        self._status_due = False
        payload = json.dumps(self._status("online")).encode()
        info = client.publish(
            self.topics.status, payload, qos=1, retain=True, properties=self._json_properties()
        )
        self._status_mids.add(info.mid)
        self._flush()

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff: forever, until cancelled."""
        self._loop = asyncio.get_running_loop()
        backoff = (self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
        delays = backoff_delays(*backoff)
        failures = 0
        try:
            while True:
                self._wake.clear()
                busy: BrokerBusy | None = None
                try:
                    await self._serve_once()
                    delays = backoff_delays(*backoff)  # it worked: start over
                    failures = 0
                except (OSError, UplinkError, TimeoutError, ssl.SSLError) as exc:
                    failures += 1
                    busy = exc if isinstance(exc, BrokerBusy) else None
                    # a clock problem is logged there
                    blamed = self._tls.clock_problem(exc, failures, self.broker)
                    if busy is not None or (
                        not blamed and (failures == 1 or failures % 20 == 0)  # now and then
                    ):
                        log.warning(
                            "MQTT %s unavailable (%d attempt(s)): %s", self.broker, failures, exc
                        )
                self.attempts += 1
                self._next_broker()  # a cluster's nodes are equivalent: the next one
                self.events.on_connection(False)
                if self._urgent or self._wake.is_set():  # a call waits: no backoff, once
                    self._urgent = False
                    delays = backoff_delays(*backoff)
                    log.info("reconnecting to MQTT now: a call is waiting")
                    continue
                delay = next(delays)
                if busy is not None:  # the broker sheds load: stay away, not in step
                    self.counters["broker_busy"] = self.counters.get("broker_busy", 0) + 1
                    delay = self.cfg.busy_backoff_s * self._rng.uniform(0.5, 1.5)
                    log.warning("MQTT broker asked to wait: next attempt in %.0f s", delay)
                log.debug("reconnecting to MQTT in %.1f s", delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()  # a press cuts the wait short
        finally:
            self._teardown()

    async def aclose(self, timeout: float = 2.0) -> None:
        """Publish the offline status and disconnect cleanly (no Last Will needed)."""
        self._closing = True
        client = self._client
        if client is None or not self._connected:
            self._teardown()
            return
        try:
            payload = json.dumps(self._status("offline")).encode()
            info = client.publish(
                self.topics.status, payload, qos=1, retain=True, properties=self._json_properties()
            )
            published = asyncio.get_running_loop().create_future()
            self._waiters[info.mid] = published
            self._flush()
            async with asyncio.timeout(timeout):
                await asyncio.wait(
                    [published, self._disconnected or published],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            client.disconnect()
            self._flush()
        except TimeoutError:
            log.warning("offline status not acknowledged within %.1f s", timeout)
        finally:
            self._teardown()

    # -- one connection ---------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        v5 = self.cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"connect-agent-{self.vin}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
        )
        client.enable_logger(logging.getLogger("agent.uplink.paho"))
        will = json.dumps(self._status("offline")).encode()
        will_props = self._json_properties(PacketTypes.WILLMESSAGE)
        if will_props is not None and self.cfg.will_delay_s:
            will_props.WillDelayInterval = self.cfg.will_delay_s  # a brief drop: no offline
        client.will_set(self.topics.status, will, qos=1, retain=True, properties=will_props)
        if self.cfg.tls:
            client.tls_set_context(self._tls.context())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_log = self._on_log
        return client

    async def _serve_once(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._new_client()
        self._client = client
        self._io = PahoOnLoop(loop, client, self._lost)
        self._inflight.clear()
        self._sent.clear()
        self._disconnected = loop.create_future()
        self._connack = loop.create_future()
        self._last_error = None
        self.limits = BrokerLimits()
        self._subscribe_retry_s = SUBSCRIBE_RETRY_S[0]
        host, port = self._endpoints[self._node]
        kwargs: dict[str, Any] = {}
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}
        try:
            # connect() resolves and opens the socket (and TLS): blocking, so in a thread.
            await loop.run_in_executor(
                None,
                partial(client.connect, host, port, self.cfg.keepalive_s, **kwargs),
            )
            async with asyncio.timeout(CONNACK_TIMEOUT_S):
                session_present = await self._connack
            self._connected = True
            self.connects += 1
            granted = self.limits.describe(self.cfg.session_expiry_s, self.cfg.keepalive_s)
            log.info(
                "MQTT connected to %s (session present: %s)%s",
                self.broker,
                session_present,
                f"; the broker grants {', '.join(granted)}" if granted else "",
            )
            self._subscribe(client)
            self.kick()  # what the driver waits for goes first into the broker's window
            self.publish_status()
            self.events.on_connection(True)
            while not self._disconnected.done():
                client.loop_misc()  # keep-alive pings and timeouts
                await asyncio.wait([self._disconnected], timeout=1.0)
        finally:
            was_connected = self._connected
            self._connected = False
            self._teardown()
            if was_connected:
                self.events.on_connection(False)

    def resubscribe(self) -> None:
        """Ask for the ack subscription again on this connection. A cluster node can lose a
        moved session's subscription without a word (NATS under a mass failover), so that
        acks the backend sends never arrive: before a request is repeated for want of an ack,
        the subscription is renewed (SUBSCRIBE to a filter the session has just replaces it)."""
        if self._client is not None and self._connected:
            self.counters["resubscribes"] = self.counters.get("resubscribes", 0) + 1
            self._subscribe(self._client)

    def _subscribe(self, client: mqtt.Client) -> None:
        """The ack subscription, on every connection (a session the broker lost has none)."""
        if client is not self._client or not self._connected:
            return
        client.subscribe(self.topics.ack, qos=1)
        self._flush()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        """A SUBACK that refuses the ack topic: no ack would ever reach the car, so the driver
        would never see that help is coming. Ask again, 1 s doubling to 30 s, on this
        connection (a NATS node refuses it while JetStream is still moving a session)."""
        if not any(reason.is_failure for reason in reasons):
            self._subscribe_retry_s = SUBSCRIBE_RETRY_S[0]
            return
        self.counters["subscribe_refused"] = self.counters.get("subscribe_refused", 0) + 1
        delay = self._subscribe_retry_s
        self._subscribe_retry_s = min(delay * 2, SUBSCRIBE_RETRY_S[1])
        log.warning(
            "broker refused the ack subscription (%s): asking again in %.0f s",
            ", ".join(str(r) for r in reasons),
            delay,
        )
        if self._loop is not None:
            self._loop.call_later(delay, self._subscribe, client)

    def _teardown(self) -> None:
        io, self._io = self._io, None
        self._client = None
        self._connected = False
        if io is not None:
            io.close()
        self._inflight.clear()
        self._sent.clear()
        self._waiters.clear()
        self._status_mids.clear()
        self._status_due = self._starved = self._urgent_waiting = False

    def _flush(self) -> None:
        if self._io is not None:
            self._io.flush()

    def _json_properties(self, packet: int = PacketTypes.PUBLISH) -> Properties | None:
        if self.cfg.protocol != "5":
            return None
        props = Properties(packet)
        props.ContentType = "application/json"
        props.PayloadFormatIndicator = 1
        props.UserProperty = ("schema", SCHEMA_VERSION)  # the contract's version (SPEC §5)
        return props

    def _properties(self, entry: Entry) -> Properties | None:
        props = self._json_properties()
        if props is not None:
            props.ResponseTopic = self.topics.ack
            props.CorrelationData = entry.incident_id.encode()
            if entry.kind == "update" and self.cfg.update_expiry_s:
                # counted from the update's creation: one that waited in the outbox is older
                age = self.outbox.age_s(entry) or 0.0
                props.MessageExpiryInterval = max(1, round(self.cfg.update_expiry_s - age))
        return props

    # -- paho callbacks (socket ones may come from the connect thread) ----------------------

    def _lost(self) -> None:
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._connack is None or self._connack.done():
            return
        if reason.is_failure:
            kind = BrokerBusy if reason.value in BUSY_REASONS else UplinkError
            self._connack.set_exception(kind(f"broker refused the connection: {reason}"))
        else:
            self._tls.connected(client)
            self.limits = BrokerLimits.from_connack(props)  # kick() keeps to its window
            self._connack.set_result(bool(flags.session_present))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure or not self._closing:
            log.warning("MQTT disconnected: %s", reason)
        else:
            log.info("MQTT disconnected: %s", reason)
        if self._connack is not None and not self._connack.done():
            detail = f" ({self._last_error})" if self._last_error else ""
            self._connack.set_exception(
                UplinkError(f"disconnected before CONNACK: {reason}{detail}")
            )
        self._lost()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        entry = self._inflight.pop(mid, None)
        self._status_mids.discard(mid)
        if (self._starved or self._status_due) and self._loop is not None:
            self._loop.call_soon(self._refill)
        if entry is None:  # a status message
            waiter = self._waiters.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if reason.is_failure:
            # The broker refused it (e.g. not authorised): keep it, try again next connection.
            self.counters["publish_refused"] = self.counters.get("publish_refused", 0) + 1
            log.error(
                "broker refused %s %s/%d: %s", entry.kind, entry.incident_id, entry.sequence, reason
            )
            return
        self.outbox.remove(entry)
        self._sent.discard(entry.key)
        if self._loop is not None:
            self._loop.call_soon(self.outbox.scrub)  # before anyone looks, after the delivery
        self.events.on_delivered(entry)

    def _refill(self) -> None:
        """A PUBACK made room in the broker's window: what waited for it goes out."""
        self._starved = False
        self.kick()
        if self._status_due:
            self.publish_status()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.topics.ack:
            return
        try:
            self.events.on_ack(bytes(message.payload))
        except Exception:  # a bug must not stop the PUBACK (the broker would resend forever)
            self.counters["ack_handler_errors"] = self.counters.get("ack_handler_errors", 0) + 1
            log.exception("handling an ack failed")

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and client is self._client:
            self._last_error = text
