"""What a simulated fleet car puts on the wire, as pure functions and values (no sockets).

The contract's payloads (SPEC.md §5: status, a schema-valid request, cancel) for
:mod:`hw_sim.fleet`'s cars, the two MQTT 3.1.1 packets the broker's codec
(:mod:`hw_sim.mqtt_codec`) does not encode because a broker never sends them (CONNECT with a
Will, SUBSCRIBE), and Linux TCP_INFO counters of a socket, for the keep-alive's cost.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hw_sim.mqtt_codec import PacketType, encode_binary, encode_packet, encode_string

__all__ = [
    "ROOT",
    "Sent",
    "TcpCounters",
    "cancel_payload",
    "encode_connect",
    "encode_subscribe",
    "encode_unsubscribe",
    "fleet_vin",
    "request_payload",
    "rfc3339",
    "status_payload",
]

ROOT = "assistance/v1"
VERSION = "fleet-sim"


def rfc3339(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def fleet_vin(index: int) -> str:
    """A valid 17-character VIN (no I, O or Q) for car ``index``."""
    return f"FLEETCAR{index:09d}"


def status_payload(state: str, open_incident: str | None, pending: int) -> bytes:
    return json.dumps(
        {
            "state": state,
            "since": rfc3339(),
            "version": VERSION,
            "button": "ok",
            "gps": "fix",
            "can": "ok",
            "open_incident": open_incident,
            "outbox_pending": pending,
        }
    ).encode()


def request_payload(vin: str, incident_id: str, sequence: int) -> bytes:
    """A schema-valid assistance request; what is unknown to a simulated car is ``null``."""
    now = rfc3339()
    body: dict[str, Any] = {
        "schema": "assistance-request/1",
        "incident_id": incident_id,
        "sequence": sequence,
        "created_at": now,
        "trigger": {"source": "can", "held_ms": 2000, "driver_category": None},
        "contact": {
            "name": None,
            "address": {"street": None, "postal_code": None, "city": None, "country": None},
            "phone": "+10000000000",  # fictitious
            "email": None,
        },
        "vehicle": {
            "vin": vin,
            "vin_source": "config",
            "registration_plate": None,
            "registration_country": None,
            "model": None,
            "colour": None,
            "first_registration": None,
        },
        "location": {
            **dict.fromkeys(("lat", "lon", "alt_m", "heading_deg", "speed_kmh")),
            **dict.fromkeys(("horizontal_accuracy_m", "fix_time", "fix_age_s")),
            "fix": "none",
            "trusted": False,
            "country": None,
            "locality": None,
            "recent": [],
        },
        "problem": {
            "category": "breakdown",
            "description": "A simulated fleet car asks for help.",
            "evidence": [],
        },
        "vehicle_state": {
            **dict.fromkeys(("battery_12v_v", "hv_soc_pct", "range_km", "ignition")),
            "tyre_pressure_kpa": dict.fromkeys(("fl", "fr", "rl", "rr")),
            **dict.fromkeys(("speed_kmh", "trailer_connected", "hazard_lights")),
            **dict.fromkeys(("doors_locked", "key_detected", "airbag_deployed")),
            "odometer_km": None,
            "dtcs": None,
        },
        "coverage": {
            "status": "unknown",
            "reasons": [],
            "valid_until": None,
            "country_covered": None,
            "reported_within_24h": True,
        },
    }
    return json.dumps(body).encode()


def cancel_payload(incident_id: str, sequence: int) -> bytes:
    return json.dumps(
        {"incident_id": incident_id, "sequence": sequence, "cancelled_at": rfc3339()}
    ).encode()


def encode_connect(
    client_id: str, keep_alive: int, will_topic: str, will: bytes, *, clean: bool = False
) -> bytes:
    """MQTT 3.1.1 CONNECT: clean session false (unless ``clean``), a retained QoS 1 Last Will."""
    flags = 0x20 | 0x01 << 3 | 0x04 | (0x02 if clean else 0)  # will retain, QoS 1, flag; clean
    body = encode_string("MQTT") + bytes([4, flags]) + keep_alive.to_bytes(2, "big")
    body += encode_string(client_id) + encode_string(will_topic) + encode_binary(will)
    return encode_packet(PacketType.CONNECT, 0, body)


def encode_subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + encode_string(topic_filter) + bytes([qos])
    return encode_packet(PacketType.SUBSCRIBE, 0b0010, body)


def encode_unsubscribe(packet_id: int, topic_filter: str) -> bytes:
    body = packet_id.to_bytes(2, "big") + encode_string(topic_filter)
    return encode_packet(PacketType.UNSUBSCRIBE, 0b0010, body)


@dataclass(frozen=True)
class Sent:
    """A request or cancel a car sent: what the backend must receive."""

    kind: str
    incident_id: str
    sequence: int


@dataclass(frozen=True)
class TcpCounters:
    """A socket's counters from Linux TCP_INFO: payload bytes and segments, both ways."""

    bytes_acked: int
    bytes_received: int
    segs_out: int
    segs_in: int

    @classmethod
    def of(cls, sock: socket.socket) -> TcpCounters:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        acked, received = struct.unpack_from("=QQ", info, 120)  # tcpi_bytes_acked, _received
        segs_out, segs_in = struct.unpack_from("=II", info, 136)  # tcpi_segs_out, _in
        return cls(acked, received, segs_out, segs_in)

    def __sub__(self, other: TcpCounters) -> TcpCounters:
        return TcpCounters(
            self.bytes_acked - other.bytes_acked,
            self.bytes_received - other.bytes_received,
            self.segs_out - other.segs_out,
            self.segs_in - other.segs_in,
        )
