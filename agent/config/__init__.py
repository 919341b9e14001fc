"""Configuration: TOML file -> one frozen, typed :class:`Config`.

Precedence, in this one place: command line (``--set key=value``) > environment
(``CONNECT_AGENT__SECTION__KEY=value``) > file > defaults. Every error names the file, the key
and what was expected, and is raised as :class:`~agent.errors.ConfigError`.

- :mod:`~agent.config.schema`: every key declared once (type, default, check, doc, privacy);
- :mod:`~agent.config.checks`: the checks a value goes through;
- :mod:`~agent.config.loader`: precedence, the checks across keys, the masked print;
- :mod:`~agent.config.files`: the safe reader (never blocks, bounded) for this file and the
  coverage profile (:mod:`~agent.config.profile`);
- :mod:`~agent.config.docs`: the README table and the example file, generated.
"""

from agent.config.checks import is_hostname
from agent.config.files import MAX_FILE_BYTES
from agent.config.loader import (
    FIELDS,
    PERSONAL,
    Config,
    effective,
    env_overrides,
    load,
    mask,
    parse_set,
)
from agent.config.profile import load_profile
from agent.config.schema import (
    ENV_PREFIX,
    KEYS,
    ButtonConfig,
    CanConfig,
    GpsdConfig,
    Key,
    MqttConfig,
    SerialConfig,
    Settings,
)

__all__ = [
    "ENV_PREFIX",
    "FIELDS",
    "KEYS",
    "MAX_FILE_BYTES",
    "PERSONAL",
    "ButtonConfig",
    "CanConfig",
    "Config",
    "GpsdConfig",
    "Key",
    "MqttConfig",
    "SerialConfig",
    "Settings",
    "effective",
    "env_overrides",
    "is_hostname",
    "load",
    "load_profile",
    "mask",
    "parse_set",
]
