"""Every configuration key, declared once.

A section of the file is a frozen dataclass; each of its fields is one key, declared with
:func:`key`: the default, the check, a one-line doc, whether it is personal data, an example
value. Everything else is derived by walking the declaration (:func:`keys`): the loader's key
table, the masked ``check-config`` print, the README's table and the commented example file
(``python -m agent.config.docs``).
"""

# ruff: noqa: RUF009 - key() and section() are dataclasses.field() with metadata, not defaults

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from agent.config import checks as c

ENV_PREFIX = "CONNECT_AGENT__"


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED: Any = _Marker("REQUIRED")  # a key's default: it must be given
NO_EXAMPLE: Any = _Marker("NO_EXAMPLE")  # the example file shows the default
_KEY = "connect_agent.key"
_SECTION = "connect_agent.section"


@dataclass(frozen=True, slots=True)
class Key:
    """One key's declaration; ``name`` (dotted) is filled in by :func:`keys`."""

    default: Any
    check: c.Check[Any]
    doc: str
    personal: bool = False
    example: Any = NO_EXAMPLE  # shown in the example file instead of the default
    commented: bool = False  # the example file shows the key commented out
    env: bool = True  # settable as CONNECT_AGENT__SECTION__KEY
    name: str = ""

    @property
    def env_name(self) -> str | None:
        return ENV_PREFIX + self.name.upper().replace(".", "__") if self.env else None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def key(
    default: Any,
    check: c.Check[Any],
    doc: str,
    *,
    personal: bool = False,
    example: Any = NO_EXAMPLE,
    commented: bool = False,
) -> Any:
    """A dataclass field that is one configuration key (the value is set by the loader)."""
    spec = Key(default, check, doc, personal, example, commented)
    return dataclasses.field(metadata={_KEY: spec})


def section(cls: type[Any]) -> Any:
    """A dataclass field that is a nested section (``[contact.address]``)."""
    return dataclasses.field(metadata={_SECTION: cls})


@dataclass(frozen=True, slots=True)
class CanConfig:
    """The CAN bus and its communication matrix."""

    interface: str = key(
        "socketcan", c.text, "any python-can interface: socketcan, virtual, pcan, kvaser, ..."
    )
    channel: str = key("can0", c.text, "can0 in the car, vcan0 on a laptop")
    bitrate: int = key(
        500_000, c.integer(10_000, 1_000_000), "bit/s, used where the interface sets it"
    )
    dbc: Path = key("connect.dbc", c.path, "the communication matrix (DBC file)")


@dataclass(frozen=True, slots=True)
class ButtonConfig:
    """The CONNECT button."""

    source: str = key(
        "can", c.choice("can", "serial"), "CONNECT_BUTTON 0x3A1 on the bus, or the UART roof module"
    )
    hold_ms: int = key(2000, c.integer(100, 30_000), "hold this long to call; shorter does nothing")
    cancel_window_s: float = key(
        8.0, c.number(0, 600), "a second hold within this time of the start cancels the call"
    )
    deliver_timeout_s: float = key(
        60.0, c.number(1, 3600), "LED 'failed' when not PUBACKed by then (delivery goes on)"
    )


@dataclass(frozen=True, slots=True)
class SerialConfig:
    """The UART roof module (button.source = "serial")."""

    port: str | None = key(
        None,
        c.optional(c.text),
        "the roof module's UART; required when button.source = 'serial'",
        example="/dev/ttyS1",
        commented=True,
    )
    baudrate: int = key(115_200, c.integer(1200, 4_000_000), "the roof module's UART speed")


@dataclass(frozen=True, slots=True)
class GpsdConfig:
    """gpsd, the position source."""

    host: str = key("127.0.0.1", c.host, "where gpsd listens")
    port: int = key(2947, c.integer(1, 65535), "gpsd's TCP port")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The MQTT broker of the assistance backend."""

    host: tuple[c.Broker, ...] = key(
        REQUIRED,
        c.brokers,
        "the broker, or a list of cluster nodes tried in turn (each 'host' or 'host:port'); "
        "on failure the agent moves to the next, with backoff and jitter",
        example="assistance-broker.example.net",
    )
    port: int = key(8883, c.integer(1, 65535), "the brokers' TCP port where host gives none")
    protocol: str = key("5", c.choice("5", "3.1.1"), "MQTT version; 3.1.1 for brokers without 5")
    topic_root: str = key(
        "assistance/v1", c.topic_root, "topics are <topic_root>/<vin>/{request,cancel,...}"
    )
    keepalive_s: int = key(20, c.integer(5, 30), "MQTT keep-alive interval")
    session_expiry_s: int = key(
        7 * 86400,
        c.integer(0, 30 * 86400),
        "how long the broker keeps our session and queued acks (MQTT 5)",
    )
    tls: bool = key(True, c.boolean, "mutual TLS with ca_file, cert_file and key_file")
    ca_file: Path | None = key(
        None,
        c.optional(c.path),
        "the CA certificate that signed the broker's (PEM)",
        example="/etc/connect-agent/ca.pem",
    )
    cert_file: Path | None = key(
        None,
        c.optional(c.path),
        "this car's client certificate (PEM)",
        example="/etc/connect-agent/client.pem",
    )
    key_file: Path | None = key(
        None,
        c.optional(c.path),
        "this car's private key (PEM, mode 0600)",
        example="/etc/connect-agent/client.key",
    )
    allow_insecure: bool = key(
        False, c.boolean, "with tls = false: plain TCP, and only to a loopback broker"
    )
    reconnect_min_s: float = key(
        0.5, c.number(0.01, 60), "reconnect backoff: capped exponential with full jitter"
    )
    reconnect_max_s: float = key(
        30.0, c.number(0.1, 600), "the backoff's cap (at least reconnect_min_s); never gives up"
    )
    ack_timeout_s: float = key(
        30.0, c.number(1, 3600), "PUBACKed but no backend answer by then: publish it again"
    )
    will_delay_s: int = key(
        30,
        c.integer(0, 3600),
        "MQTT 5 Will Delay: the broker publishes the offline Last Will only after this long "
        "without us, so a brief drop does not show offline (no longer than session_expiry_s)",
    )
    update_expiry_s: int = key(
        600,
        c.integer(0, 86400),
        "MQTT 5 Message Expiry of a position update, counted from its creation: a broker drops "
        "one the backend has not taken by then (0: never)",
    )
    busy_backoff_s: float = key(
        60.0,
        c.number(1, 3600),
        "after CONNACK 0x89 server busy, 0x97 quota exceeded or 0x9F connection rate "
        "exceeded: wait this long, +-50 % jitter (a press still tries at once)",
    )
    publish_timeout_s: float = key(
        3.0,
        c.number(0.5, 60),
        "a request or cancel not PUBACKed by then: the link is dead, reconnect at once "
        "(above the link's worst round trip plus two retransmissions)",
    )
    loss_probe_s: float = key(
        0.25,
        c.off_or_number(0.05, 5),
        "while a request or cancel waits for its PUBACK: an MQTT PINGREQ 20 ms after it, then "
        "this often, so that the broker's TCP acknowledges a later segment and the kernel "
        "resends a lost request after about a round trip, not its retransmission timeout",
    )

    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """Every broker as (host, port), in the order they are tried."""
        return tuple((b.host, self.port if b.port is None else b.port) for b in self.host)


@dataclass(frozen=True, slots=True)
class VehicleSection:
    """The car (the request's vehicle object)."""

    vin: str = key(
        REQUIRED,
        c.vin,
        "fallback VIN; the one read over UDS wins when the gateway answers",
        example="YSMFD3KA5PL012345",
    )
    registration_plate: str | None = key(
        None, c.optional(c.text), "the number plate", example="BE 123456"
    )
    registration_country: str | None = key(
        None, c.optional(c.country), "where the car is registered", example="CH"
    )
    model: str | None = key(None, c.optional(c.text), "the model", example="Polestar 2")
    colour: str | None = key(None, c.optional(c.text), "the colour", example="Snow")
    first_registration: date | None = key(
        None,
        c.optional(c.day),
        "start of the coverage period",
        example=date(2024, 3, 15),
    )
    coverage_extension_until: date | None = key(
        None,
        c.optional(c.day),
        "end of a prolonged assistance contract",
        example=date(2029, 3, 15),
        commented=True,
    )


@dataclass(frozen=True, slots=True)
class AddressSection:
    """The driver's address (personal data)."""

    street: str | None = key(
        None, c.optional(c.text), "street and number", personal=True, example="Bahnhofstrasse 1"
    )
    postal_code: str | None = key(
        None, c.optional(c.text), "postal code", personal=True, example="3011"
    )
    city: str | None = key(None, c.optional(c.text), "city", personal=True, example="Bern")
    country: str | None = key(None, c.optional(c.country), "country", personal=True, example="CH")


@dataclass(frozen=True, slots=True)
class ContactSection:
    """The driver (personal data: never logged, masked by check-config)."""

    name: str = key(REQUIRED, c.text, "the driver's name", personal=True, example="Anna Muster")
    phone: str | None = key(
        None,
        c.optional(c.phone),
        "at least one of phone and email",
        personal=True,
        example="+41 79 123 45 67",
    )
    email: str | None = key(
        None,
        c.optional(c.email),
        "at least one of phone and email",
        personal=True,
        example="anna.muster@example.ch",
    )
    address: AddressSection = section(AddressSection)


@dataclass(frozen=True, slots=True)
class StateSection:
    """The durable outbox."""

    directory: Path = key("/var/lib/connect-agent", c.path, "the outbox database lives here")
    max_rows: int = key(
        1000, c.integer(10, 1_000_000), "the outbox never holds more (only updates are evicted)"
    )
    max_bytes: int = key(
        8 * 1024 * 1024, c.integer(65_536, 1 << 30), "nor more payload bytes than this"
    )
    retention_days: float = key(
        7.0, c.number(0.01, 365), "anything older is purged, delivered or not"
    )


@dataclass(frozen=True, slots=True)
class ClockSection:
    """The wall clock on a board without a real-time clock (README: "The clock")."""

    synchronized_file: Path = key(
        "/run/systemd/timesync/synchronized",
        c.path,
        "systemd-timesyncd's flag: while its directory exists and the flag does not, the "
        "system clock is not trusted and GPS time is used",
    )


@dataclass(frozen=True, slots=True)
class CoverageSection:
    """The assistance programme's coverage rules."""

    profile: Path | None = key(
        None,
        c.optional(c.path),
        "the coverage rules file (advisory, never blocks a call)",
        example="coverage/polestar.toml",
    )


@dataclass(frozen=True, slots=True)
class LogSection:
    """Logging."""

    level: str = key(
        "INFO", c.choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True), "the log level"
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Every key of the file, checked, by section."""

    can: CanConfig = section(CanConfig)
    button: ButtonConfig = section(ButtonConfig)
    serial: SerialConfig = section(SerialConfig)
    gpsd: GpsdConfig = section(GpsdConfig)
    mqtt: MqttConfig = section(MqttConfig)
    vehicle: VehicleSection = section(VehicleSection)
    contact: ContactSection = section(ContactSection)
    state: StateSection = section(StateSection)
    clock: ClockSection = section(ClockSection)
    coverage: CoverageSection = section(CoverageSection)
    log: LogSection = section(LogSection)


@dataclass(frozen=True, slots=True)
class Section:
    """One table of the file as declared: its dotted name, class and doc."""

    name: str
    cls: type[Any]
    doc: str


def sections(cls: type[Any] = Settings, prefix: str = "") -> Iterator[Section]:
    """Every section class under ``cls``, depth first, in declaration order."""
    for f in dataclasses.fields(cls):
        sub = f.metadata.get(_SECTION)
        if sub is not None:
            yield Section(prefix + f.name, sub, (sub.__doc__ or "").strip())
            yield from sections(sub, f"{prefix}{f.name}.")


def section_keys(sec: Section) -> Iterator[Key]:
    """The keys declared directly in one section, named."""
    for f in dataclasses.fields(sec.cls):
        spec = f.metadata.get(_KEY)
        if spec is not None:
            yield dataclasses.replace(spec, name=f"{sec.name}.{f.name}")


def keys() -> Iterator[Key]:
    """Every key, in declaration order (which is also the order values are checked in)."""
    for sec in sections():
        yield from section_keys(sec)


def build(cls: type[Any], values: dict[str, Any], prefix: str = "") -> Any:
    """An instance of section class ``cls`` from checked values keyed by dotted name."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        sub = f.metadata.get(_SECTION)
        name = prefix + f.name
        kwargs[f.name] = build(sub, values, name + ".") if sub is not None else values[name]
    return cls(**kwargs)


def shallow(instance: Any) -> dict[str, Any]:
    """A section's own fields by name, nested sections as they are."""
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


KEYS: dict[str, Key] = {spec.name: spec for spec in keys()}
