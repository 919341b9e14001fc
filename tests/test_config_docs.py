"""The configuration keys are declared once; the README table and the example file agree."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

from agent import config
from agent.config import docs, schema
from agent.config.files import flatten

ROOT = Path(__file__).resolve().parent.parent


def test_readme_table_is_generated_from_the_declaration() -> None:
    readme = (ROOT / docs.README).read_text("utf-8")
    assert docs.readme_table(readme) == docs.markdown(), (
        "README.md is stale: run python -m agent.config.docs --write"
    )


def test_example_file_is_generated_from_the_declaration() -> None:
    assert (ROOT / docs.EXAMPLE).read_text("utf-8") == docs.example(), (
        "the example file is stale: run python -m agent.config.docs --write"
    )


def test_every_key_is_in_the_table_and_the_example() -> None:
    table = docs.markdown()
    for name in config.FIELDS:
        assert f"| `{name}` |" in table
    shown = flatten(tomllib.loads(docs.example()))
    commented = {name for name, spec in schema.KEYS.items() if spec.commented}
    assert set(shown) == set(config.FIELDS) - commented
    for name in commented:
        assert f"# {name.rpartition('.')[2]} = " in docs.example()


def test_personal_keys_are_the_contact_section() -> None:
    assert {k for k in config.FIELDS if k.startswith("contact.")} == config.PERSONAL


def test_defaults_and_examples_pass_their_own_checks_and_have_the_declared_type() -> None:
    """What the declaration promises holds: each check turns the default and the example into a
    value of the field's annotated type."""
    for sec in schema.sections():
        hints = typing.get_type_hints(sec.cls)
        for f in dataclasses.fields(sec.cls):
            if f.name not in {k.name.rpartition(".")[2] for k in schema.section_keys(sec)}:
                continue
            spec = schema.KEYS[f"{sec.name}.{f.name}"]
            for raw in (spec.default, spec.example):
                if raw is schema.REQUIRED or raw is schema.NO_EXAMPLE:
                    continue
                ctx = config.checks.Ctx(ROOT / "config" / "x.toml", spec.name, False)
                value = spec.check(raw, ctx)
                assert _is_instance(value, hints[f.name]), (spec.name, value, hints[f.name])


def _is_instance(value: object, hint: object) -> bool:
    if typing.get_origin(hint) is tuple:  # tuple[X, ...]
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(isinstance(v, item) for v in value)
    args = typing.get_args(hint)
    types = tuple(type(None) if a is type(None) else a for a in args) if args else (hint,)
    return isinstance(value, types)
