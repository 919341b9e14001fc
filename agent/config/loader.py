"""TOML file, environment and command line -> one frozen, typed :class:`Config`.

Precedence, in this one place (:func:`load`): command line (``--set key=value``) > environment
(``CONNECT_AGENT__SECTION__KEY=value``) > file > defaults. The keys themselves are declared in
:mod:`agent.config.schema`; this module adds the checks that span several keys.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.checks import Check, Ctx, is_loopback
from agent.config.files import flatten, parse_toml, read_bytes
from agent.config.profile import load_profile
from agent.config.schema import (
    ENV_PREFIX,
    KEYS,
    REQUIRED,
    ButtonConfig,
    CanConfig,
    ClockSection,
    CoverageSection,
    GpsdConfig,
    Key,
    LogSection,
    MqttConfig,
    SerialConfig,
    Settings,
    StateSection,
    build,
    section_keys,
    sections,
    shallow,
)
from agent.core.coverage import CoverageProfile
from agent.core.request import Address, Contact, VehicleProfile
from agent.errors import ConfigError, cut, shown
from agent.outbox import Limits
from agent.tls import check_tls_files

# key -> (check, default): the loader's table, derived from the declaration
FIELDS: dict[str, tuple[Check[Any], Any]] = {name: (k.check, k.default) for name, k in KEYS.items()}
PERSONAL = frozenset(name for name, k in KEYS.items() if k.personal)


@dataclass(frozen=True, slots=True)
class Config:
    """The checked configuration: one field per section of the file, as the agent uses it.

    ``[vehicle]`` and ``[contact]`` arrive as the core's :class:`VehicleProfile` and
    :class:`Contact` (same field names as their sections); ``[coverage]`` is ``coverage_file``,
    since ``coverage`` is the profile it names, loaded.
    """

    source: Path
    can: CanConfig
    button: ButtonConfig
    serial: SerialConfig
    gpsd: GpsdConfig
    mqtt: MqttConfig
    vehicle: VehicleProfile
    contact: Contact
    state: StateSection
    clock: ClockSection
    coverage_file: CoverageSection
    log: LogSection
    coverage: CoverageProfile | None

    @property
    def state_dir(self) -> Path:
        return self.state.directory

    @property
    def outbox_limits(self) -> Limits:
        return Limits(self.state.max_rows, self.state.max_bytes, self.state.retention_days * 86400)

    @property
    def coverage_profile(self) -> Path | None:
        return self.coverage_file.profile

    @property
    def log_level(self) -> str:
        return self.log.level

    def section(self, name: str) -> Any:
        """The object holding section ``name``'s keys (``"contact.address"``)."""
        obj: Any = self
        for part in name.split("."):
            obj = getattr(obj, "coverage_file" if obj is self and part == "coverage" else part)
        return obj


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
            raise ConfigError(f"--set {shown(item)}: expected key=value, e.g. mqtt.host=127.0.0.1")
        result[key.strip()] = value
    return result


def load(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    path = Path(path)
    raw = parse_toml(path, read_bytes(path, missing="no such configuration file"), flatten)
    for key in raw:
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key '{cut(key)}'{_suggest(key)}")
    from_env = env_overrides(os.environ if environ is None else environ)
    text_values = {**from_env, **(overrides or {})}
    for key in text_values:
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key '{cut(key)}' (from the environment or --set)")
        if key in from_env and not KEYS[key].env:
            raise ConfigError(f"{path}: key '{key}' cannot be set from the environment")
    values: dict[str, Any] = {}
    for key, spec in KEYS.items():
        from_text = key in text_values
        if from_text:
            value: Any = text_values[key]
        elif key in raw:
            value = raw[key]
        elif spec.default is REQUIRED:
            raise ConfigError(f"{path}: key '{key}' is required")
        else:
            value = spec.default
        values[key] = spec.check(value, Ctx(path, key, from_text, spec.personal))
    return _build(path, build(Settings, values))


def _suggest(key: str) -> str:
    section = key.split(".", maxsplit=1)[0]
    known = sorted(k for k in KEYS if k.startswith(section + "."))
    return f" (known keys in [{cut(section)}]: {', '.join(known)})" if known else ""


def _check_readable(path: Path | None, file: Path, key: str) -> None:
    if path is None:
        raise ConfigError(f"{file}: key '{key}' is required when mqtt.tls is true")
    if not os.access(path, os.R_OK) or not path.is_file():
        raise ConfigError(f"{file}: key '{key}': cannot read {path}")


def _build(path: Path, s: Settings) -> Config:
    """The checks across keys, in this order, then the objects the agent runs on."""
    if s.contact.phone is None and s.contact.email is None:
        raise ConfigError(
            f"{path}: keys 'contact.phone' and 'contact.email': expected at least one of them "
            "(the service must be able to reach the driver), got neither"
        )
    dbc = s.can.dbc
    if not dbc.is_file() or not os.access(dbc, os.R_OK):
        raise ConfigError(f"{path}: key 'can.dbc': cannot read DBC file {dbc}")
    from agent.core.frames import load_dbc  # noqa: PLC0415 - cantools is slow to import

    try:
        load_dbc(dbc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: key 'can.dbc': {exc}") from exc
    mqtt = s.mqtt
    if mqtt.tls:
        _check_readable(mqtt.ca_file, path, "mqtt.ca_file")
        _check_readable(mqtt.cert_file, path, "mqtt.cert_file")
        _check_readable(mqtt.key_file, path, "mqtt.key_file")
        # Contents, key permissions, key/certificate match; the validity dates are checked by
        # check-config and only warned about by run (the board's clock may not be set yet).
        check_tls_files(mqtt.ca_file, mqtt.cert_file, mqtt.key_file, source=path, check_time=False)
    elif not mqtt.allow_insecure:
        raise ConfigError(
            f"{path}: key 'mqtt.tls': plain TCP sends the driver's data unencrypted; "
            "expected true, or mqtt.allow_insecure = true to allow it explicitly"
        )
    elif remote := [str(b) for b in mqtt.host if not is_loopback(b.host)]:
        raise ConfigError(
            f"{path}: key 'mqtt.host': plain TCP (mqtt.tls = false) is only allowed to a "
            f"broker on loopback, got {shown(', '.join(remote))}"
        )
    if s.button.source == "serial" and s.serial.port is None:
        raise ConfigError(f"{path}: key 'serial.port' is required when button.source = 'serial'")
    profile = None
    if s.coverage.profile is not None:
        try:
            profile = load_profile(s.coverage.profile)
        except ConfigError as exc:
            raise ConfigError(f"{path}: key 'coverage.profile': {exc}") from exc
    if mqtt.reconnect_max_s < mqtt.reconnect_min_s:
        mqtt = dataclasses.replace(mqtt, reconnect_max_s=mqtt.reconnect_min_s)
    contact = shallow(s.contact) | {"address": Address(**shallow(s.contact.address))}
    return Config(
        source=path,
        can=s.can,
        button=s.button,
        serial=s.serial,
        gpsd=s.gpsd,
        mqtt=mqtt,
        vehicle=VehicleProfile(**shallow(s.vehicle)),
        contact=Contact(**contact),
        state=s.state,
        clock=s.clock,
        coverage_file=s.coverage,
        log=s.log,
        coverage=profile,
    )


def mask(value: object) -> str | None:
    """Personal data as it may appear in output: the first character, then stars."""
    if value is None:
        return None
    return str(value)[:1] + "***"


def effective(config: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration by section, personal data masked (for check-config)."""
    result: dict[str, Any] = {}
    for sec in sections():
        table = result
        for part in sec.name.split("."):
            table = table.setdefault(part, {})
        holder = config.section(sec.name)
        for spec in section_keys(sec):
            last = spec.name.rpartition(".")[2]
            table[last] = _shown(spec, getattr(holder, last))
    return result


def _shown(spec: Key, value: object) -> object:
    if spec.personal:
        return mask(value)
    if isinstance(value, tuple):  # mqtt.host: as written, one broker or a list
        texts = [str(item) for item in value]
        return texts[0] if len(texts) == 1 else texts
    return str(value) if isinstance(value, Path) else value
