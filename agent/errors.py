"""The package's exception root and one subclass per kind of failure.

Foreign exceptions (python-can, paho-mqtt, sqlite3, OSError) are translated at the adapter
boundary with ``raise ... from`` so callers only ever catch these.
"""

MAX_SHOWN = 80  # characters of a bad value an error message echoes


def cut(text: str) -> str:
    """``text``, cut after MAX_SHOWN characters (a bad value may be a megabyte long)."""
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


def shown(value: object) -> str:
    """A bad value as an error message echoes it: its ``repr``, cut."""
    return cut(repr(value))


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is unreadable or invalid; the message names file, key and expectation."""


class BusError(AgentError):
    """The CAN bus could not be opened or failed while running."""


class GpsError(AgentError):
    """gpsd could not be reached or spoke something we do not understand."""


class UplinkError(AgentError):
    """The MQTT uplink failed in a way that is not a transient disconnect."""


class OutboxError(AgentError):
    """The durable outbox could not be opened or written."""


class Shutdown(AgentError):
    """Raised inside the task group to stop the agent in an orderly way."""
