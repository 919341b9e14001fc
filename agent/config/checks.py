"""The checks a key's value goes through: each turns a raw value into a typed one or fails.

A :class:`Check` carries what it expects as text, so the error message, the README table and
the example file all say the same thing. Values from the environment or the command line are
strings (``Ctx.from_text``); numbers and booleans are converted from them first.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from agent.core.vin import vin_problem
from agent.errors import ConfigError, shown

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ctx:
    """Where a value is being checked: the file, the dotted key, and whether it came as text."""

    file: Path
    key: str
    from_text: bool  # the value came from the environment or the command line, as a string
    personal: bool = False  # never echo the value

    def fail(self, expected: str, got: object) -> ConfigError:
        echo = "<hidden>" if self.personal else shown(got)
        return ConfigError(f"{self.file}: key '{self.key}': expected {expected}, got {echo}")


@dataclass(frozen=True, slots=True)
class Check(Generic[T]):
    """A key's validation: what it expects (one line of text) and the function that checks."""

    expected: str
    parse: Callable[[Any, Ctx], T]

    def __call__(self, value: Any, ctx: Ctx) -> T:
        return self.parse(value, ctx)


def check(expected: str) -> Callable[[Callable[[Any, Ctx], T]], Check[T]]:
    """Decorator: a parse function becomes a :class:`Check` that expects ``expected``."""

    def wrap(parse: Callable[[Any, Ctx], T]) -> Check[T]:
        return Check(expected, parse)

    return wrap


def optional(inner: Check[T]) -> Check[T | None]:
    """``inner``, or nothing (the key may be left out)."""

    def parse(value: Any, ctx: Ctx) -> T | None:
        return None if value is None else inner(value, ctx)

    return Check(inner.expected, parse)


@check("a non-empty string")
def text(value: Any, ctx: Ctx) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ctx.fail("a non-empty string", value)
    return value.strip()


def integer(low: int, high: int) -> Check[int]:
    expected = f"an integer from {low} to {high}"

    def parse(value: Any, ctx: Ctx) -> int:
        if ctx.from_text and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ctx.fail(expected, value) from None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ctx.fail(expected, value)
        return value

    return Check(expected, parse)


def number(low: float, high: float) -> Check[float]:
    expected = f"a number from {low} to {high}"

    def parse(value: Any, ctx: Ctx) -> float:
        if ctx.from_text and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ctx.fail(expected, value) from None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (low <= value <= high)
        ):
            raise ctx.fail(expected, value)
        return float(value)

    return Check(expected, parse)


def off_or_number(low: float, high: float) -> Check[float]:
    """0 (the feature is off) or a number from ``low`` to ``high``."""
    wide = number(0, high)
    expected = f"0 (off) or a number from {low} to {high}"

    def parse(value: Any, ctx: Ctx) -> float:
        try:
            got = wide(value, ctx)
        except ConfigError:
            raise ctx.fail(expected, value) from None
        if 0 < got < low:
            raise ctx.fail(expected, value)
        return got

    return Check(expected, parse)


@check("true or false")
def boolean(value: Any, ctx: Ctx) -> bool:
    if ctx.from_text and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ctx.fail("true or false", value)
    return value


def choice(*choices: str, upper: bool = False) -> Check[str]:
    """One of ``choices``; ``upper`` compares the value upper-cased (log levels)."""
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def parse(value: Any, ctx: Ctx) -> str:
        if upper:
            value = str(value).upper()
        if value not in choices:
            raise ctx.fail(expected, value)
        return str(value)

    return Check(expected, parse)


@check("a date YYYY-MM-DD")
def day(value: Any, ctx: Ctx) -> date:
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ctx.fail("a date YYYY-MM-DD", value)


@check("a file path (a relative one from the config file's directory)")
def path(value: Any, ctx: Ctx) -> Path:
    name = text(value, ctx)
    if "\0" in name or any(len(part.encode()) > 255 for part in name.split("/")):
        raise ctx.fail("a file path (no NUL byte, no name over 255 bytes)", value)
    result = Path(name).expanduser()
    return result if result.is_absolute() else (ctx.file.parent / result)


_COUNTRY = re.compile(r"^[A-Z]{2}$")


def matching(pattern: re.Pattern[str], expected: str) -> Check[str]:
    """A string that ``pattern`` matches."""

    def parse(value: Any, ctx: Ctx) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise ctx.fail(expected, value)
        return value

    return Check(expected, parse)


country = matching(_COUNTRY, "an ISO 3166-1 alpha-2 country code such as 'CH'")


@check("a valid 17-character VIN")
def vin(value: Any, ctx: Ctx) -> str:
    result = text(value, ctx).upper()
    problem = vin_problem(result)
    if problem:
        raise ctx.fail(f"a valid 17-character VIN ({problem})", value)
    return result


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


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@check("a host name or an IP address")
def host(value: Any, ctx: Ctx) -> str:
    name = text(value, ctx)
    if is_ip(name):
        return name
    if not is_hostname(name):
        bare, sep, port = name.rpartition(":")
        if sep and port.isdigit() and (is_hostname(bare) or is_ip(bare)):
            section = ctx.key.rpartition(".")[0]
            raise ctx.fail(
                f"a host name or IP address without ':{port}' (set {section}.port)", value
            )
        raise ctx.fail("a host name or an IP address", value)
    return name


MAX_BROKERS = 16


class Broker(NamedTuple):
    """One broker or cluster node of ``mqtt.host``; ``port`` None: ``mqtt.port``."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port is None else f"{name}:{self.port}"


def _broker(item: Any, ctx: Ctx) -> Broker:
    expected = "a host name or IP address, optionally with ':port'"
    name = text(item, ctx)
    if is_ip(name):  # IPv4, or a bare IPv6 address (its colons are not a port)
        return Broker(name)
    if name.startswith("["):  # [IPv6]:port
        inside, sep, rest = name[1:].partition("]")
        if not sep or not is_ip(inside) or (rest and not rest.startswith(":")):
            raise ctx.fail(expected, item)
        return Broker(inside, _port(rest[1:], item, ctx) if rest else None)
    bare, sep, port = name.rpartition(":")
    if not sep:
        bare = name
    if not (is_hostname(bare) or is_ip(bare)):
        raise ctx.fail(expected, item)
    return Broker(bare, _port(port, item, ctx) if sep else None)


def _port(text_: str, item: Any, ctx: Ctx) -> int:
    if not text_.isdigit() or not 1 <= int(text_) <= 65535:
        raise ctx.fail("a port from 1 to 65535 after ':'", item)
    return int(text_)


@check(
    "a broker's host name or IP address, or a list of them (cluster nodes), each optionally "
    "with ':port'"
)
def brokers(value: Any, ctx: Ctx) -> tuple[Broker, ...]:
    """``"a"``, ``"a:8883"``, ``["a:8883", "b:8883"]``, or (environment, --set) ``"a,b:8883"``."""
    if isinstance(value, str):
        items: list[Any] = [part for part in value.split(",") if part.strip()] or [value]
    elif isinstance(value, list):
        items = value
    else:
        raise ctx.fail(brokers.expected, value)
    if not items:
        raise ctx.fail("at least one broker", value)
    if len(items) > MAX_BROKERS:
        raise ctx.fail(f"at most {MAX_BROKERS} brokers", f"{len(items)} of them")
    parsed = tuple(_broker(item, ctx) for item in items)
    seen: set[Broker] = set()
    for broker in parsed:
        if broker in seen:
            raise ctx.fail(f"each broker once ({broker} is listed twice)", value)
        seen.add(broker)
    return parsed


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9][0-9 ()./-]{5,24}$")


email = matching(_EMAIL, "an e-mail address")
phone = matching(_PHONE, "a phone number in international form such as '+41 79 123 45 67'")


@check("an MQTT topic without wildcards")
def topic_root(value: Any, ctx: Ctx) -> str:
    root = text(value, ctx).strip("/")
    if any(c in root for c in "+#\0") or not root:
        raise ctx.fail("an MQTT topic without wildcards", value)
    return root
