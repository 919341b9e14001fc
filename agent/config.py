"""Configuration: TOML file -> one frozen, typed :class:`Config`.

Precedence, in this one place: command line (``--set key=value``) > environment
(``CONNECT_AGENT__SECTION__KEY=value``) > file > defaults. Every error names the file, the key
and what was expected, and is raised as :class:`~agent.errors.ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from agent.core.coverage import CoverageProfile, load_profile
from agent.core.request import Address, Contact, VehicleProfile
from agent.core.vin import vin_problem
from agent.errors import ConfigError
from agent.outbox import Limits
from agent.tls import check_tls_files

ENV_PREFIX = "CONNECT_AGENT__"
_REQUIRED = object()


@dataclass(frozen=True, slots=True)
class CanConfig:
    interface: str
    channel: str
    bitrate: int
    dbc: Path


@dataclass(frozen=True, slots=True)
class ButtonConfig:
    source: str  # "can" | "serial"
    hold_ms: int
    cancel_window_s: float
    deliver_timeout_s: float


@dataclass(frozen=True, slots=True)
class SerialConfig:
    port: str | None
    baudrate: int


@dataclass(frozen=True, slots=True)
class GpsdConfig:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    protocol: str  # "5" | "3.1.1"
    topic_root: str
    keepalive_s: int
    session_expiry_s: int
    tls: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    allow_insecure: bool
    reconnect_min_s: float
    reconnect_max_s: float
    ack_timeout_s: float


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    can: CanConfig
    button: ButtonConfig
    serial: SerialConfig
    gpsd: GpsdConfig
    mqtt: MqttConfig
    vehicle: VehicleProfile
    contact: Contact
    state_dir: Path
    outbox_limits: Limits
    coverage_profile: Path | None
    coverage: CoverageProfile | None
    log_level: str


# -- field table: key -> (parser, default) ---------------------------------------------------

Parser = Callable[[Any, "_Ctx"], Any]


@dataclass(frozen=True, slots=True)
class _Ctx:
    file: Path
    key: str
    from_text: bool  # the value came from the environment or the command line, as a string

    def fail(self, expected: str, got: object) -> ConfigError:
        shown = "<hidden>" if self.key.startswith("contact.") else repr(got)
        return ConfigError(f"{self.file}: key '{self.key}': expected {expected}, got {shown}")


def _str(value: Any, ctx: _Ctx) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ctx.fail("a non-empty string", value)
    return value.strip()


def _opt_str(value: Any, ctx: _Ctx) -> str | None:
    return None if value is None else _str(value, ctx)


def _int(low: int, high: int) -> Parser:
    def parse(value: Any, ctx: _Ctx) -> int:
        if ctx.from_text and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ctx.fail(f"an integer from {low} to {high}", value) from None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ctx.fail(f"an integer from {low} to {high}", value)
        return value

    return parse


def _float(low: float, high: float) -> Parser:
    def parse(value: Any, ctx: _Ctx) -> float:
        if ctx.from_text and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ctx.fail(f"a number from {low} to {high}", value) from None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (low <= value <= high)
        ):
            raise ctx.fail(f"a number from {low} to {high}", value)
        return float(value)

    return parse


def _bool(value: Any, ctx: _Ctx) -> bool:
    if ctx.from_text and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ctx.fail("true or false", value)
    return value


def _choice(*choices: str) -> Parser:
    def parse(value: Any, ctx: _Ctx) -> str:
        if value not in choices:
            raise ctx.fail("one of " + ", ".join(repr(c) for c in choices), value)
        return str(value)

    return parse


def _date(value: Any, ctx: _Ctx) -> date | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ctx.fail("a date YYYY-MM-DD", value)


def _path(value: Any, ctx: _Ctx) -> Path:
    text = _str(value, ctx)
    if "\0" in text or any(len(part.encode()) > 255 for part in text.split("/")):
        raise ctx.fail("a file path (no NUL byte, no name over 255 bytes)", value)
    path = Path(text).expanduser()
    return path if path.is_absolute() else (ctx.file.parent / path)


def _opt_path(value: Any, ctx: _Ctx) -> Path | None:
    return None if value is None else _path(value, ctx)


_COUNTRY = re.compile(r"^[A-Z]{2}$")


def _country(value: Any, ctx: _Ctx) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _COUNTRY.match(value):
        raise ctx.fail("an ISO 3166-1 alpha-2 country code such as 'CH'", value)
    return value


def _vin(value: Any, ctx: _Ctx) -> str:
    vin = _str(value, ctx).upper()
    problem = vin_problem(vin)
    if problem:
        raise ctx.fail(f"a valid 17-character VIN ({problem})", value)
    return vin


_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_hostname(host: str) -> bool:
    """RFC 1123 host name check, linear in the length (one bounded regex per label)."""
    name = host[:-1] if host.endswith(".") else host
    if not 1 <= len(name) <= 253:
        return False
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return not name.replace(".", "").isdigit()


def _host(value: Any, ctx: _Ctx) -> str:
    host = _str(value, ctx)
    if _is_ip(host):
        return host
    if not is_hostname(host):
        name, sep, port = host.rpartition(":")
        if sep and port.isdigit() and (is_hostname(name) or _is_ip(name)):
            section = ctx.key.rpartition(".")[0]
            raise ctx.fail(
                f"a host name or IP address without ':{port}' (set {section}.port)", value
            )
        raise ctx.fail("a host name or an IP address", value)
    return host


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9][0-9 ()./-]{5,24}$")


def _email(value: Any, ctx: _Ctx) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _EMAIL.match(value):
        raise ctx.fail("an e-mail address", value)
    return value


def _phone(value: Any, ctx: _Ctx) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _PHONE.match(value):
        raise ctx.fail("a phone number in international form such as '+41 79 123 45 67'", value)
    return value


def _topic_root(value: Any, ctx: _Ctx) -> str:
    root = _str(value, ctx).strip("/")
    if any(c in root for c in "+#\0") or not root:
        raise ctx.fail("an MQTT topic without wildcards", value)
    return root


def _log_level(value: Any, ctx: _Ctx) -> str:
    return str(_choice("DEBUG", "INFO", "WARNING", "ERROR")(str(value).upper(), ctx))


FIELDS: dict[str, tuple[Parser, Any]] = {
    "can.interface": (_str, "socketcan"),
    "can.channel": (_str, "can0"),
    "can.bitrate": (_int(10_000, 1_000_000), 500_000),
    "can.dbc": (_path, "connect.dbc"),
    "button.source": (_choice("can", "serial"), "can"),
    "button.hold_ms": (_int(100, 30_000), 2000),
    "button.cancel_window_s": (_float(0, 600), 8.0),
    "button.deliver_timeout_s": (_float(1, 3600), 60.0),
    "serial.port": (_opt_str, None),
    "serial.baudrate": (_int(1200, 4_000_000), 115_200),
    "gpsd.host": (_host, "127.0.0.1"),
    "gpsd.port": (_int(1, 65535), 2947),
    "mqtt.host": (_host, _REQUIRED),
    "mqtt.port": (_int(1, 65535), 8883),
    "mqtt.protocol": (_choice("5", "3.1.1"), "5"),
    "mqtt.topic_root": (_topic_root, "assistance/v1"),
    "mqtt.keepalive_s": (_int(5, 30), 20),
    "mqtt.session_expiry_s": (_int(0, 30 * 86400), 7 * 86400),
    "mqtt.tls": (_bool, True),
    "mqtt.ca_file": (_opt_path, None),
    "mqtt.cert_file": (_opt_path, None),
    "mqtt.key_file": (_opt_path, None),
    "mqtt.allow_insecure": (_bool, False),
    "mqtt.reconnect_min_s": (_float(0.01, 60), 0.5),
    "mqtt.reconnect_max_s": (_float(0.1, 600), 30.0),
    "mqtt.ack_timeout_s": (_float(1, 3600), 30.0),
    "vehicle.vin": (_vin, _REQUIRED),
    "vehicle.registration_plate": (_opt_str, None),
    "vehicle.registration_country": (_country, None),
    "vehicle.model": (_opt_str, None),
    "vehicle.colour": (_opt_str, None),
    "vehicle.first_registration": (_date, None),
    "vehicle.coverage_extension_until": (_date, None),
    "contact.name": (_str, _REQUIRED),
    "contact.phone": (_phone, None),
    "contact.email": (_email, None),
    "contact.address.street": (_opt_str, None),
    "contact.address.postal_code": (_opt_str, None),
    "contact.address.city": (_opt_str, None),
    "contact.address.country": (_country, None),
    "state.directory": (_path, "/var/lib/connect-agent"),
    "state.max_rows": (_int(10, 1_000_000), 1000),
    "state.max_bytes": (_int(65_536, 1 << 30), 8 * 1024 * 1024),
    "state.retention_days": (_float(0.01, 365), 7.0),
    "coverage.profile": (_opt_path, None),
    "log.level": (_log_level, "INFO"),
}
PERSONAL = frozenset(k for k in FIELDS if k.startswith("contact."))


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``CONNECT_AGENT__MQTT__HOST=x`` -> ``{"mqtt.host": "x"}``."""
    return {
        name[len(ENV_PREFIX) :].lower().replace("__", "."): value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX)
    }


def parse_set(items: list[str]) -> dict[str, str]:
    """Command-line ``--set key=value`` items."""
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. mqtt.host=127.0.0.1")
        result[key.strip()] = value
    return result


def load(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    path = Path(path)
    raw = _parse(path, _read(path))
    for key in raw:
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown key '{key}'{_suggest(key)}")
    text_values = {**env_overrides(os.environ if environ is None else environ), **(overrides or {})}
    for key in text_values:
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown key '{key}' (from the environment or --set)")
    values: dict[str, Any] = {}
    for key, (parser, default) in FIELDS.items():
        from_text = key in text_values
        if from_text:
            value: Any = text_values[key]
        elif key in raw:
            value = raw[key]
        elif default is _REQUIRED:
            raise ConfigError(f"{path}: key '{key}' is required")
        else:
            value = default
        values[key] = parser(value, _Ctx(path, key, from_text))
    return _build(path, values)


MAX_FILE_BYTES = 1 << 20  # a real configuration is a few KiB


def _read(path: Path) -> bytes:
    """The file's bytes; never blocks (a FIFO) and never reads more than MAX_FILE_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConfigError(f"{path}: cannot read: {kind}")
        data = os.read(fd, MAX_FILE_BYTES + 1)  # one byte more tells "too large"
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: too large (more than {MAX_FILE_BYTES} bytes)")
    return data


def _parse(path: Path, data: bytes) -> dict[str, Any]:
    """The file's keys, flattened (``section.key``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return _flatten(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None


def _suggest(key: str) -> str:
    section = key.split(".", maxsplit=1)[0]
    known = sorted(k for k in FIELDS if k.startswith(section + "."))
    return f" (known keys in [{section}]: {', '.join(known)})" if known else ""


def _check_readable(path: Path | None, file: Path, key: str) -> None:
    if path is None:
        raise ConfigError(f"{file}: key '{key}' is required when mqtt.tls is true")
    if not os.access(path, os.R_OK) or not path.is_file():
        raise ConfigError(f"{file}: key '{key}': cannot read {path}")


def _build(path: Path, v: dict[str, Any]) -> Config:
    if v["contact.phone"] is None and v["contact.email"] is None:
        raise ConfigError(
            f"{path}: keys 'contact.phone' and 'contact.email': expected at least one of them "
            "(the service must be able to reach the driver), got neither"
        )
    dbc = v["can.dbc"]
    if not dbc.is_file() or not os.access(dbc, os.R_OK):
        raise ConfigError(f"{path}: key 'can.dbc': cannot read DBC file {dbc}")
    from agent.core.frames import load_dbc  # noqa: PLC0415 - cantools is slow to import

    try:
        load_dbc(dbc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: key 'can.dbc': {exc}") from exc
    if v["mqtt.tls"]:
        for key in ("mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"):
            _check_readable(v[key], path, key)
        # Contents, key permissions, key/certificate match; the validity dates are checked by
        # check-config and only warned about by run (the board's clock may not be set yet).
        check_tls_files(
            v["mqtt.ca_file"],
            v["mqtt.cert_file"],
            v["mqtt.key_file"],
            source=path,
            check_time=False,
        )
    elif not v["mqtt.allow_insecure"]:
        raise ConfigError(
            f"{path}: key 'mqtt.tls': plain TCP sends the driver's data unencrypted; "
            "expected true, or mqtt.allow_insecure = true to allow it explicitly"
        )
    elif not _is_loopback(v["mqtt.host"]):
        raise ConfigError(
            f"{path}: key 'mqtt.host': plain TCP (mqtt.tls = false) is only allowed to a "
            f"broker on loopback, got {v['mqtt.host']!r}"
        )
    if v["button.source"] == "serial" and v["serial.port"] is None:
        raise ConfigError(f"{path}: key 'serial.port' is required when button.source = 'serial'")
    coverage = v["coverage.profile"]
    profile = None
    if coverage is not None:
        try:
            profile = load_profile(coverage)
        except ConfigError as exc:
            raise ConfigError(f"{path}: key 'coverage.profile': {exc}") from exc
    return Config(
        source=path,
        can=CanConfig(v["can.interface"], v["can.channel"], v["can.bitrate"], dbc),
        button=ButtonConfig(
            v["button.source"],
            v["button.hold_ms"],
            v["button.cancel_window_s"],
            v["button.deliver_timeout_s"],
        ),
        serial=SerialConfig(v["serial.port"], v["serial.baudrate"]),
        gpsd=GpsdConfig(v["gpsd.host"], v["gpsd.port"]),
        mqtt=MqttConfig(
            host=v["mqtt.host"],
            port=v["mqtt.port"],
            protocol=v["mqtt.protocol"],
            topic_root=v["mqtt.topic_root"],
            keepalive_s=v["mqtt.keepalive_s"],
            session_expiry_s=v["mqtt.session_expiry_s"],
            tls=v["mqtt.tls"],
            ca_file=v["mqtt.ca_file"],
            cert_file=v["mqtt.cert_file"],
            key_file=v["mqtt.key_file"],
            allow_insecure=v["mqtt.allow_insecure"],
            reconnect_min_s=v["mqtt.reconnect_min_s"],
            reconnect_max_s=max(v["mqtt.reconnect_max_s"], v["mqtt.reconnect_min_s"]),
            ack_timeout_s=v["mqtt.ack_timeout_s"],
        ),
        vehicle=VehicleProfile(
            vin=v["vehicle.vin"],
            registration_plate=v["vehicle.registration_plate"],
            registration_country=v["vehicle.registration_country"],
            model=v["vehicle.model"],
            colour=v["vehicle.colour"],
            first_registration=v["vehicle.first_registration"],
            coverage_extension_until=v["vehicle.coverage_extension_until"],
        ),
        contact=Contact(
            name=v["contact.name"],
            address=Address(
                v["contact.address.street"],
                v["contact.address.postal_code"],
                v["contact.address.city"],
                v["contact.address.country"],
            ),
            phone=v["contact.phone"],
            email=v["contact.email"],
        ),
        state_dir=v["state.directory"],
        outbox_limits=Limits(
            v["state.max_rows"], v["state.max_bytes"], v["state.retention_days"] * 86400
        ),
        coverage_profile=coverage,
        coverage=profile,
        log_level=v["log.level"],
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mask(value: str | None) -> str | None:
    """Personal data as it may appear in output: the first character, then stars."""
    if value is None:
        return None
    return value[:1] + "***"


def effective(config: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration by section, personal data masked (for check-config)."""
    c = config
    contact = c.contact
    return {
        "can": {
            "interface": c.can.interface,
            "channel": c.can.channel,
            "bitrate": c.can.bitrate,
            "dbc": str(c.can.dbc),
        },
        "button": {
            "source": c.button.source,
            "hold_ms": c.button.hold_ms,
            "cancel_window_s": c.button.cancel_window_s,
            "deliver_timeout_s": c.button.deliver_timeout_s,
        },
        "serial": {"port": c.serial.port, "baudrate": c.serial.baudrate},
        "gpsd": {"host": c.gpsd.host, "port": c.gpsd.port},
        "mqtt": {
            "host": c.mqtt.host,
            "port": c.mqtt.port,
            "protocol": c.mqtt.protocol,
            "topic_root": c.mqtt.topic_root,
            "keepalive_s": c.mqtt.keepalive_s,
            "session_expiry_s": c.mqtt.session_expiry_s,
            "tls": c.mqtt.tls,
            "ca_file": str(c.mqtt.ca_file) if c.mqtt.ca_file else None,
            "cert_file": str(c.mqtt.cert_file) if c.mqtt.cert_file else None,
            "key_file": str(c.mqtt.key_file) if c.mqtt.key_file else None,
            "allow_insecure": c.mqtt.allow_insecure,
            "reconnect_min_s": c.mqtt.reconnect_min_s,
            "reconnect_max_s": c.mqtt.reconnect_max_s,
            "ack_timeout_s": c.mqtt.ack_timeout_s,
        },
        "vehicle": {
            "vin": c.vehicle.vin,
            "registration_plate": c.vehicle.registration_plate,
            "registration_country": c.vehicle.registration_country,
            "model": c.vehicle.model,
            "colour": c.vehicle.colour,
            "first_registration": c.vehicle.first_registration,
            "coverage_extension_until": c.vehicle.coverage_extension_until,
        },
        "contact": {
            "name": mask(contact.name),
            "phone": mask(contact.phone),
            "email": mask(contact.email),
            "address": {
                "street": mask(contact.address.street),
                "postal_code": mask(contact.address.postal_code),
                "city": mask(contact.address.city),
                "country": contact.address.country,
            },
        },
        "state": {
            "directory": str(c.state_dir),
            "max_rows": c.outbox_limits.max_rows,
            "max_bytes": c.outbox_limits.max_bytes,
            "retention_days": c.outbox_limits.retention_s / 86400,
        },
        "coverage": {"profile": str(c.coverage_profile) if c.coverage_profile else None},
        "log": {"level": c.log_level},
    }
