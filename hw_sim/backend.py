"""The simulated assistance backend: receives, validates, de-duplicates and acknowledges.

It subscribes to every vehicle under the topic root, validates each message against the
contract's JSON Schemas, keeps requests de-duplicated by (incident_id, sequence) and counts
the duplicates QoS 1 may bring, and answers with an ack on ``<root>/<vin>/ack``. It runs
paho's network thread and hands every event to the asyncio loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.waiters import Waiters
from hw_sim.contract import errors as schema_errors
from hw_sim.service import Service

log = logging.getLogger("hw_sim.backend")


@dataclass
class Received:
    kind: str  # request, cancel, update, status
    vin: str
    payload: dict[str, Any]
    at: float  # monotonic arrival time
    properties: dict[str, Any] = field(default_factory=dict)
    retained: bool = False


class SimulatedBackend(Service):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        root: str = "assistance/v1",
        protocol: str = "5",
        auto_ack: str | None = "received",
        client_id: str = "assistance-backend-sim",
        connect_timeout: float = 10.0,  # for the CONNACK and the SUBACK
        persistent: bool = True,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.persistent = persistent
        self.host = host
        self.port = port
        self.root = root
        self.auto_ack = auto_ack
        self.protocol = protocol
        self.received: list[Received] = []
        self.requests: dict[tuple[str, int], Received] = {}
        self.duplicates = 0
        self.answers: dict[str, str] = {}  # incident id -> the last ack status sent
        self.invalid: list[tuple[str, list[str]]] = []
        self.status: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters = Waiters()
        self._connected = asyncio.Event()
        # A persistent session, as a real backend has: what vehicles publish while it is
        # reconnecting waits for it at the broker. persistent=False is a passing look (clean
        # session, QoS 0: no session or queue at the broker), e.g. at the retained statuses.
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
            clean_session=None if protocol == "5" else not persistent,
        )
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]  # floats work
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe; returns once the broker accepted the session."""
        self._loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if self.persistent else 0
            kwargs = {"clean_start": not self.persistent, "properties": props}
        await self._loop.run_in_executor(
            None, partial(self._client.connect, self.host, self.port, 30, **kwargs)
        )
        self._client.loop_start()
        async with asyncio.timeout(self.connect_timeout):
            await self._connected.wait()

    async def aclose(self) -> None:
        """Disconnect (safe to call twice)."""
        if self._loop is None:
            return
        self._loop = None
        self._client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, self._client.loop_stop)

    # -- paho thread -> loop ----------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        client.subscribe(f"{self.root}/+/+", qos=1 if self.persistent else 0)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        properties: dict[str, Any] = {}
        props = getattr(message, "properties", None)
        if props is not None:
            for name in ("ContentType", "ResponseTopic", "CorrelationData"):
                if hasattr(props, name):
                    properties[name] = getattr(props, name)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(
                self._handle, message.topic, bytes(message.payload), properties, message.retain
            )

    def _handle(self, topic: str, raw: bytes, properties: dict[str, Any], retained: bool) -> None:
        parts = topic.split("/")
        vin, kind = parts[-2], parts[-1]
        if kind == "ack":
            return
        if kind == "status" and not raw:
            return
        try:
            payload = json.loads(raw)
        except ValueError:
            self.invalid.append((topic, ["not JSON"]))
            log.warning("backend: %s is not JSON", topic)
            return
        problems = (
            schema_errors(kind, payload)
            if kind in ("request", "cancel", "update", "status")
            else ["unknown topic"]
        )
        if problems:
            self.invalid.append((topic, problems))
            log.warning("backend: invalid %s: %s", kind, "; ".join(problems))
        item = Received(kind, vin, payload, time.monotonic(), properties, retained)
        self.received.append(item)
        if kind == "status":
            self.status[vin] = payload
        elif kind == "request" and not problems:
            key = (payload["incident_id"], payload["sequence"])
            if key in self.requests:
                # Stored once; but answered again, as a real backend must: the first answer
                # may have been lost (a broker that died before delivering it).
                self.duplicates += 1
                last = self.answers.get(payload["incident_id"])
                if last is not None:
                    self.ack(vin, payload["incident_id"], last)
            else:
                self.requests[key] = item
                if self.auto_ack:
                    self.ack(vin, payload["incident_id"], self.auto_ack)
        self._waiters.notify()

    # -- operator actions -------------------------------------------------------------------

    def ack(
        self,
        vin: str,
        incident_id: str,
        status: str,
        *,
        message: str | None = None,
        eta_minutes: int | None = None,
    ) -> None:
        self.answers[incident_id] = status
        body: dict[str, Any] = {"incident_id": incident_id, "status": status}
        if message is not None:
            body["message"] = message
        if eta_minutes is not None:
            body["eta_minutes"] = eta_minutes
        props = None
        if self.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
            props.CorrelationData = incident_id.encode()
        self._client.publish(f"{self.root}/{vin}/ack", json.dumps(body), qos=1, properties=props)

    # -- waiting ----------------------------------------------------------------------------

    async def next_change(self) -> None:
        """Wait for the next message."""
        await self._waiters.next()

    def of_kind(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.kind == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[Received]:
        await self._waiters.wait(lambda: len(self.of_kind(kind)) >= count, timeout)
        return self.of_kind(kind)

    async def wait_status(self, vin: str, key: str, value: Any, timeout: float = 10.0) -> None:
        await self._waiters.wait(lambda: self.status.get(vin, {}).get(key) == value, timeout)
