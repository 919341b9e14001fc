"""Validation against the agent's MQTT contract (the JSON Schemas in ``agent/schemas``).

The simulated backend, the console and the tests check every payload the agent sends here;
the agent ships the schema files but not ``jsonschema`` (the ``[sim]`` extra brings it).
"""

from __future__ import annotations

from functools import cache

from jsonschema import Draft202012Validator

from agent.schemas import schema


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(name: str, document: object) -> list[str]:
    """Every violation of schema ``name`` in ``document``, as readable lines (empty: valid)."""
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator(name).iter_errors(document), key=str)
    ]
