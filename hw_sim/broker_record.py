"""What the embedded broker saw and did, kept for tests to assert on, and its production limits.

A production MQTT 5 broker (EMQX, VerneMQ, HiveMQ, AWS IoT Core) grants limits in its CONNACK
and refuses connections when it sheds load. :class:`ProductionLimits` is what the embedded
broker is told to grant; :class:`BrokerRecord` is what it observed: every CONNECT (with its
properties and its Will's), every PUBLISH received (its properties, its size on the wire, how
many of that connection's messages were unacknowledged when it came), every PINGREQ and every
DISCONNECT the broker sent. The records are bounded; payloads are kept only here, in memory,
and never logged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hw_sim.mqtt_codec import Prop, Properties, PropertyValue

RECORD_LIMIT = 10_000
"""Records kept of each kind; older ones are forgotten (``hw-sim demo`` runs for hours)."""


@dataclass
class ProductionLimits:
    """What the broker grants in CONNACK (None: the MQTT 5 default, nothing advertised).

    ``receive_maximum`` is advertised and watched, not enforced: a PUBLISH beyond it is counted
    (``receive_maximum_exceeded``) and recorded, so a test sees the client's window, and the
    connection goes on. ``server_keep_alive`` replaces the client's keep-alive, for the client
    and for the broker's own timeout. ``max_session_expiry`` caps the Session Expiry Interval a
    client asks for; CONNACK names the one granted when it is less.
    """

    receive_maximum: int | None = None
    server_keep_alive: int | None = None
    max_session_expiry: int | None = None

    def connack_properties(self, asked_expiry: int) -> tuple[tuple[int, PropertyValue], ...]:
        props: list[tuple[int, PropertyValue]] = []
        if self.receive_maximum is not None:
            props.append((Prop.RECEIVE_MAXIMUM, self.receive_maximum))
        if self.server_keep_alive is not None:
            props.append((Prop.SERVER_KEEP_ALIVE, self.server_keep_alive))
        if self.max_session_expiry is not None and asked_expiry > self.max_session_expiry:
            props.append((Prop.SESSION_EXPIRY_INTERVAL, self.max_session_expiry))
        return tuple(props)

    def granted_expiry(self, asked: int) -> int:
        if self.max_session_expiry is None:
            return asked
        return min(asked, self.max_session_expiry)


def property_of(props: Properties, ident: int) -> PropertyValue | None:
    """The first property ``ident`` or None."""
    for key, value in props:
        if key == ident:
            return value
    return None


def user_properties(props: Properties) -> list[tuple[str, str]]:
    return [v for k, v in props if k == Prop.USER_PROPERTY and isinstance(v, tuple)]


@dataclass(frozen=True)
class ConnectRecord:
    client_id: str
    connection: int  # the broker's serial number of the TCP connection
    at: float  # monotonic, when the CONNECT was read
    version: int
    keep_alive: int  # as the client asked
    properties: Properties
    will_properties: Properties | None  # None: no Will
    reason: int  # the CONNACK's reason code (0: accepted)


@dataclass(frozen=True)
class PublishRecord:
    client_id: str
    connection: int
    at: float  # monotonic
    wall: float  # time.time(), to compare with times in the payload
    topic: str
    payload: bytes
    qos: int
    packet_id: int
    properties: Properties
    size: int  # the whole packet on the wire, fixed header included
    unacked: int  # this connection's QoS 1/2 messages not yet acknowledged, this one included

    def prop(self, ident: int) -> PropertyValue | None:
        return property_of(self.properties, ident)

    @property
    def user_properties(self) -> list[tuple[str, str]]:
        return user_properties(self.properties)


@dataclass(frozen=True)
class PingRecord:
    client_id: str
    connection: int
    at: float


@dataclass(frozen=True)
class DisconnectRecord:
    client_id: str
    connection: int
    at: float
    reason: int  # the reason code of the DISCONNECT the broker sent


@dataclass
class BrokerRecord:
    connects: deque[ConnectRecord] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))
    publishes: deque[PublishRecord] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))
    pings: deque[PingRecord] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))
    disconnects: deque[DisconnectRecord] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))

    def connects_of(self, client_id: str) -> list[ConnectRecord]:
        return [c for c in self.connects if c.client_id == client_id]

    def publishes_of(self, client_id: str) -> list[PublishRecord]:
        return [p for p in self.publishes if p.client_id == client_id]

    def pings_of(self, client_id: str) -> list[PingRecord]:
        return [p for p in self.pings if p.client_id == client_id]

    def disconnects_of(self, client_id: str) -> list[DisconnectRecord]:
        return [d for d in self.disconnects if d.client_id == client_id]

    def clear(self) -> None:
        for records in (self.connects, self.publishes, self.pings, self.disconnects):
            records.clear()
