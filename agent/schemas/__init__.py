"""The JSON Schemas of the MQTT contract (SPEC §5): request, cancel, update, ack, status.

The files are the agent's contract and ship with it; the agent itself never validates against
them (no ``jsonschema`` on the board): the simulators and the tests do.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

NAMES = ("request", "cancel", "update", "ack", "status")
SCHEMA_VERSION = "1"  # every schema's $id ends in -1.json; sent as the user property "schema"


@cache
def schema(name: str) -> dict[str, Any]:
    if name not in NAMES:
        raise KeyError(f"no schema named {name!r}; known: {', '.join(NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded
