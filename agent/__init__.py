"""connect-agent: the in-car agent behind the roadside-assistance CONNECT button."""

__version__ = "0.1.0"
