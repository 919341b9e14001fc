"""MQTT uplink through paho-mqtt, driven by the asyncio event loop (no paho thread).

paho does the protocol; this adapter only moves bytes: the socket is watched with
``loop.add_reader``/``add_writer`` and paho's ``loop_read``/``loop_write`` run from there, as
aiomqtt does. Every connection attempt uses a fresh paho client, and the outbox is the one
source of truth for what still has to go out: after each CONNACK every pending message is
published again (QoS 1 allows the duplicate; it carries the same incident id and sequence).

Persistent session (MQTT 5 clean_start=False with a session expiry, or 3.1.1
clean_session=False), Last Will with a retained ``offline`` status, keep-alive at most 30 s,
reconnects with capped exponential backoff and full jitter, never giving up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
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
from agent.config import MqttConfig
from agent.errors import ConfigError, UplinkError
from agent.outbox import Entry, Outbox
from agent.tls import client_context

log = logging.getLogger("agent.uplink")

CONNACK_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 3.0  # a request or cancel without PUBACK by then: the path is dead
URGENT = ("request", "cancel")  # what the driver is waiting for
# The kernel's own watch on the MQTT socket: a probe after 10 s of silence, 3 probes 5 s
# apart; unacknowledged data for 20 s ends the connection. Bounded, on any link.
TCP_KEEPALIVE = ((socket.SO_KEEPALIVE, 1),)
TCP_OPTIONS = (
    (socket.TCP_KEEPIDLE, 10),
    (socket.TCP_KEEPINTVL, 5),
    (socket.TCP_KEEPCNT, 3),
    (socket.TCP_USER_TIMEOUT, 20_000),
)


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


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """Mutual TLS, 1.2 or later, with hostname verification."""
    try:
        return client_context(cfg.ca_file, cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError, ConfigError) as exc:
        raise UplinkError(f"cannot set up TLS from the configured files: {exc}") from exc


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
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        self.cfg = cfg
        self.publish_timeout_s = publish_timeout_s
        self.vin = vin
        self.topics = Topics(cfg.topic_root, vin)
        self.outbox = outbox
        self.events = events
        self._status = status
        self._rng = rng or random.Random()
        self._client: mqtt.Client | None = None
        self._connected = False
        self._inflight: dict[int, Entry] = {}  # paho mid -> entry, for this connection only
        self._sent: set[int] = set()  # outbox ids published on this connection
        self._disconnected: asyncio.Future[None] | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._closing = False  # aclose() asked for the disconnect
        self._urgent = False  # the last connection died under a call: reconnect at once
        self._last_error: str | None = None  # paho's last error line on this connection
        self._waiters: dict[int, asyncio.Future[None]] = {}  # status mid -> its PUBACK
        self._wake = asyncio.Event()  # something urgent to send while disconnected
        self.connects = 0
        self.attempts = 0
        self.counters: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        return self._connected

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
        for entry in self.outbox.pending():
            if entry.id in self._sent:
                continue
            info = client.publish(
                entry.topic, entry.payload, qos=1, properties=self._properties(entry)
            )
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
            self._sent.add(entry.id)
            if entry.kind in URGENT and self._loop is not None:
                self._loop.call_later(self.publish_timeout_s, self._deadline, client, info.mid)
        self._flush(client)

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
        payload = json.dumps(self._status("online")).encode()
        client.publish(
            self.topics.status, payload, qos=1, retain=True, properties=self._json_properties()
        )
        self._flush(client)

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff: forever, until cancelled."""
        self._loop = asyncio.get_running_loop()
        backoff = (self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
        delays = backoff_delays(*backoff)
        failures = 0
        try:
            while True:
                self._wake.clear()
                try:
                    await self._serve_once()
                    delays = backoff_delays(*backoff)  # it worked: start over
                    failures = 0
                except (OSError, UplinkError, TimeoutError, ssl.SSLError) as exc:
                    failures += 1
                    if failures == 1 or failures % 20 == 0:  # once an outage, then now and then
                        log.warning(
                            "MQTT %s:%d unavailable (%d attempt(s)): %s",
                            self.cfg.host,
                            self.cfg.port,
                            failures,
                            exc,
                        )
                self.attempts += 1
                self.events.on_connection(False)
                if self._urgent or self._wake.is_set():  # a call waits: no backoff, once
                    self._urgent = False
                    delays = backoff_delays(*backoff)
                    log.info("reconnecting to MQTT now: a call is waiting")
                    continue
                delay = next(delays)
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
            self._flush(client)
            async with asyncio.timeout(timeout):
                await asyncio.wait(
                    [published, self._disconnected or published],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            client.disconnect()
            self._flush(client)
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
        client.will_set(
            self.topics.status,
            will,
            qos=1,
            retain=True,
            properties=self._json_properties(PacketTypes.WILLMESSAGE),
        )
        if self.cfg.tls:
            client.tls_set_context(tls_context(self.cfg))
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        return client

    async def _serve_once(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._new_client()
        self._client = client
        self._inflight.clear()
        self._sent.clear()
        self._disconnected = loop.create_future()
        self._connack = loop.create_future()
        self._last_error = None
        kwargs: dict[str, Any] = {}
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}
        try:
            # connect() resolves and opens the socket (and TLS): blocking, so in a thread.
            await loop.run_in_executor(
                None,
                partial(
                    client.connect, self.cfg.host, self.cfg.port, self.cfg.keepalive_s, **kwargs
                ),
            )
            async with asyncio.timeout(CONNACK_TIMEOUT_S):
                session_present = await self._connack
            self._connected = True
            self.connects += 1
            log.info(
                "MQTT connected to %s:%d (session present: %s)",
                self.cfg.host,
                self.cfg.port,
                session_present,
            )
            client.subscribe(self.topics.ack, qos=1)
            self.publish_status()
            self.kick()
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

    def _teardown(self) -> None:
        client, self._client = self._client, None
        self._connected = False
        if client is not None:
            client.on_disconnect = None
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._forget_fd()
        self._inflight.clear()
        self._sent.clear()
        self._waiters.clear()

    def _forget_fd(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None

    def _flush(self, client: mqtt.Client) -> None:
        """Write what paho queued right away instead of waiting for the writer callback."""
        if client.want_write():
            client.loop_write()

    def _json_properties(self, packet: int = PacketTypes.PUBLISH) -> Properties | None:
        if self.cfg.protocol != "5":
            return None
        props = Properties(packet)
        props.ContentType = "application/json"
        props.PayloadFormatIndicator = 1
        return props

    def _properties(self, entry: Entry) -> Properties | None:
        props = self._json_properties()
        if props is not None:
            props.ResponseTopic = self.topics.ack
            props.CorrelationData = entry.incident_id.encode()
        return props

    # -- paho callbacks (socket ones may come from the connect thread) ----------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not every socket is TCP
            for option, value in TCP_KEEPALIVE:
                sock.setsockopt(socket.SOL_SOCKET, option, value)
            for option, value in TCP_OPTIONS:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._watch, client, sock.fileno())

    def _watch(self, client: mqtt.Client, fd: int) -> None:
        if client is not self._client:
            return
        self._fd = fd
        assert self._loop is not None
        self._loop.add_reader(fd, self._readable, client)

    def _readable(self, client: mqtt.Client) -> None:
        try:
            client.loop_read()
        except (OSError, ssl.SSLError) as exc:
            log.warning("MQTT read failed: %s", exc)
            self._lost()

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if client is self._client:
            self._forget_fd()

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._watch_write, client, sock.fileno())

    def _watch_write(self, client: mqtt.Client, fd: int) -> None:
        if client is self._client and self._loop is not None and fd == self._fd:
            self._loop.add_writer(fd, self._writable, client)

    def _writable(self, client: mqtt.Client) -> None:
        try:
            client.loop_write()
        except (OSError, ssl.SSLError) as exc:
            log.warning("MQTT write failed: %s", exc)
            self._lost()

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if client is self._client and self._loop is not None:
            self._loop.call_soon_threadsafe(self._unwatch_write, sock.fileno())

    def _unwatch_write(self, fd: int) -> None:
        if self._loop is not None and fd == self._fd:
            self._loop.remove_writer(fd)

    def _lost(self) -> None:
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._connack is None or self._connack.done():
            return
        if reason.is_failure:
            self._connack.set_exception(UplinkError(f"broker refused the connection: {reason}"))
        else:
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
        self.outbox.remove(entry.id)
        self._sent.discard(entry.id)
        if self._loop is not None:
            self._loop.call_soon(self.outbox.scrub)  # before anyone looks, after the delivery
        self.events.on_delivered(entry)

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
