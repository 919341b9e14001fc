"""What a production MQTT 5 broker grants in its CONNACK, and what the agent does with it.

EMQX, VerneMQ, HiveMQ and AWS IoT Core each enforce limits: an in-flight window (Receive
Maximum), a largest packet (Maximum Packet Size), a session expiry and a keep-alive of their
own choosing, and CONNACK refusals that mean "not now" (server busy, quota exceeded,
connection rate exceeded). The uplink reads them here; nothing in this module does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paho.mqtt.properties import Properties

__all__ = ["BUSY_REASONS", "PAHO_INFLIGHT", "BrokerLimits", "publish_size"]

# CONNACK reason codes that ask a client to stay away for a while: retrying at the normal
# backoff would only add to the storm the broker is shedding (MQTT 5 §3.2.2.2).
BUSY_REASONS = {
    0x89: "server busy",
    0x97: "quota exceeded",
    0x9F: "connection rate exceeded",
}
PAHO_INFLIGHT = 20  # paho's own in-flight window, the most the agent uses on any broker


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """The limits of one connection; an absent property is MQTT 5's default."""

    receive_maximum: int = 65535
    maximum_packet_size: int | None = None  # None: only the protocol's own limit
    session_expiry_s: int | None = None  # None: the one asked for was granted
    server_keepalive_s: int | None = None  # None: the one asked for was granted

    @classmethod
    def from_connack(cls, props: Any) -> BrokerLimits:
        if props is None:
            return cls()
        return cls(
            receive_maximum=getattr(props, "ReceiveMaximum", 65535),
            maximum_packet_size=getattr(props, "MaximumPacketSize", None),
            session_expiry_s=getattr(props, "SessionExpiryInterval", None),
            server_keepalive_s=getattr(props, "ServerKeepAlive", None),
        )

    @property
    def inflight(self) -> int:
        """The QoS 1 messages to keep unacknowledged at once: the broker's window or paho's."""
        return max(1, min(self.receive_maximum, PAHO_INFLIGHT))

    def fits(self, size: int) -> bool:
        return self.maximum_packet_size is None or size <= self.maximum_packet_size

    def describe(self, asked_expiry_s: int, asked_keepalive_s: int) -> list[str]:
        """What differs from the defaults or from what was asked, one phrase each."""
        notes = []
        if self.receive_maximum != 65535:
            notes.append(f"receive maximum {self.receive_maximum}")
        if self.maximum_packet_size is not None:
            notes.append(f"maximum packet size {self.maximum_packet_size} bytes")
        if self.session_expiry_s is not None and self.session_expiry_s != asked_expiry_s:
            notes.append(f"session expiry {self.session_expiry_s} s (asked {asked_expiry_s} s)")
        if self.server_keepalive_s is not None and self.server_keepalive_s != asked_keepalive_s:
            notes.append(f"keep-alive {self.server_keepalive_s} s (asked {asked_keepalive_s} s)")
        return notes


def _varint_len(value: int) -> int:
    length = 1
    while value >= 128:
        value //= 128
        length += 1
    return length


def publish_size(topic: str, payload: bytes, props: Properties | None, qos: int = 1) -> int:
    """The bytes of the PUBLISH packet that paho will write, as Maximum Packet Size counts."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
    if props is not None:
        remaining += len(props.pack())
    return 1 + _varint_len(remaining) + remaining
