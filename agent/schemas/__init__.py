"""The JSON Schemas of the MQTT contract (SPEC §5): request, cancel, update, ack, status."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

NAMES = ("request", "cancel", "update", "ack", "status")


@cache
def schema(name: str) -> dict[str, Any]:
    if name not in NAMES:
        raise KeyError(f"no schema named {name!r}; known: {', '.join(NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(name: str, document: object) -> list[str]:
    """Every violation of schema ``name`` in ``document``, as readable lines (empty: valid)."""
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator(name).iter_errors(document), key=str)
    ]
