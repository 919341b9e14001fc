"""The package's exception root and one subclass per kind of failure.

Foreign exceptions (python-can, paho-mqtt, sqlite3, OSError) are translated at the adapter
boundary with ``raise ... from`` so callers only ever catch these.
"""


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
